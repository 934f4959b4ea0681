"""Install recbole-qrec: ``pip install -e .[test]``."""

from setuptools import find_packages, setup

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
    "transformers>=4.40",
    "open_clip_torch>=2.24",
    "pyyaml>=6.0",
    "tqdm>=4.60",
]

setup(
    name="recbole-qrec",
    version="0.1.0",
    description="Semantic-ID multimodal sequential recommenders (Q-Bert4Rec, TIGER, MQL4GRec) for RecBole",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["recbole_qrec", "recbole_qrec.*", "dataset_prep", "dataset_prep.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=7.0", "pillow>=9.0"]},
    entry_points={"console_scripts": ["recbole-qrec=recbole_qrec.quick_start:main"]},
)
