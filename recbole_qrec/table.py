"""Side-by-side tables and plots of result records: ``recbole-qrec table [results files ...]``.

Records (``results/results.jsonl`` lines, or a JSON file holding a list of them or ``{"results": [...]}``) that
share model, dataset and configuration (the settings they set, or without recorded settings their ``config_hash``)
are seeds of one configuration; a model's cell on a dataset is the mean
± std of its test metrics over those seeds (the configuration with the most seeds, then the latest, when a model
has several). Rows are models, datasets sit side by side; the best value of each column is marked, the second
too, and each model's relative improvement over the best baseline is given per dataset, with a paired t-test
over matching seeds. Plots: grouped bars of a test metric per dataset (``png``), and the validation metric after
each evaluated epoch (``curves``, from the records' ``valid_curve``). With ``--tokenizer`` each dataset gets three more
columns from the records' ``tokenizer`` figures (:mod:`recbole_qrec.data.sid_quality`) of the model's main code table:
its collision rate before and after de-duplication and its mean codebook utilisation over the levels (mean over the
seeds; empty for models of item IDs). With ``--split warm`` or ``cold`` the cells are the test metrics of the users
whose target is a warm or a cold item (``test_warm`` / ``test_cold`` of the records of cold-start runs,
``cold_start_share``; records without them are left out). With ``--configurations`` a model that ran in several
configurations (an ablation, a sweep's candidates) gets a row per configuration, named by the settings in which they
differ (the records' ``settings``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_qrec.errors import ConfigError, MalformedDataError, repeated, required_module, single_line
from recbole_qrec.fileio import check_output_folder
from recbole_qrec.resources import PROPERTIES_DIR

BASELINES = ("GRU4Rec", "SASRec", "BERT4Rec", "FDSA")
DEFAULT_METRICS = ("hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10")
FORMATS = ("md", "csv", "png", "tex", "curves")
SUFFIXES = {"curves": "curves.png"}  # the file name suffix of a format, when it is not the format's name
PAPER_FILE = PROPERTIES_DIR / "paper.yaml"
SIGNIFICANCE = 0.05
MARK = "†"
METRIC = re.compile(r"^(?P<name>[a-z]+)@(?P<k>[1-9]\d*)$")
ALIASES = {"hr": "hit"}
LABELS = {"hit": "HR", "ndcg": "NDCG"}
TOKENIZER_COLUMNS = ("collisions before", "collisions after", "utilisation")
SPLITS = {"all": "test", "warm": "test_warm", "cold": "test_cold"}  # --split: the record's test metrics it shows
# --by: models as rows with the datasets side by side (wide), or a row per model and dataset (long).
LAYOUTS = {"model,dataset": "wide", "model+dataset": "long"}


@dataclass(frozen=True)
class Cell:
    """A model's metric on a dataset over the seeds of one configuration."""

    by_seed: dict[int, float]

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.by_seed.values())

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None for one seed."""
        return statistics.stdev(self.by_seed.values()) if self.n > 1 else None


@dataclass
class Table:
    """Cells by ``(model, dataset)`` and metric, with the records behind them, each dataset's baseline and the
    published numbers."""

    models: list[str]
    datasets: list[str]
    metrics: list[str]
    key_metric: str
    cells: dict[tuple[str, str], dict[str, Cell]]
    baselines: dict[str, str]
    paper: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    runs: dict[tuple[str, str], dict[int, dict[str, Any]]] = field(default_factory=dict)  # the cells' records by seed
    command: str | None = None  # the command that built the table, shown under it
    tokenizer: bool = False  # add the TOKENIZER_COLUMNS per dataset
    split: str = "all"  # the test targets of the cells (SPLITS)
    layout: str = "wide"  # LAYOUTS

    def tokenizer_values(self, model: str, dataset: str) -> list[float | None]:
        """The :data:`TOKENIZER_COLUMNS` of a cell: means over its seeds of the main code table's figures (None
        where its records have none)."""
        tables = [next((t for t in (r.get("tokenizer") or {}).values() if t.get("main")), None)
                  for r in self.runs.get((model, dataset), {}).values()]
        tables = [t for t in tables if t is not None]
        if not tables:
            return [None] * len(TOKENIZER_COLUMNS)
        figures = [(t["collision_rate_before"], t["collision_rate_after"], statistics.fmean(t["utilisation"]))
                   for t in tables]
        return [statistics.fmean(column) for column in zip(*figures)]

    def n(self, model: str, dataset: str) -> int | None:
        cells = self.cells.get((model, dataset))
        return next(iter(cells.values())).n if cells else None

    def measured_models(self) -> list[str]:
        """The models with results (not only published numbers), in row order."""
        return [m for m in self.models if any((m, d) in self.cells for d in self.datasets)]

    def paper_metrics(self) -> list[str]:
        return [m for m in self.metrics if any(m in values for values in self.paper.values())]

    def rank(self, model: str, dataset: str, metric: str) -> int | None:
        """1 for the column's best mean, 2 for the second best, else None."""
        cell = self.cells.get((model, dataset), {}).get(metric)
        if cell is None:
            return None
        column = sorted({round(c[metric].mean, 12) for (_, d), c in self.cells.items() if d == dataset}, reverse=True)
        place = column.index(round(cell.mean, 12)) + 1
        return place if place <= 2 else None

    def cell_keys(self) -> list[tuple[str, str]]:
        """``(model, dataset)`` of every row of the long layout: measured or published, models first."""
        return [(m, d) for m in self.models for d in self.datasets if (m, d) in self.cells or (m, d) in self.paper]

    def versus_paper(self, model: str, dataset: str) -> float | None:
        """Relative difference (%) of ``model``'s key metric on ``dataset`` to its paper's."""
        cell = self.cells.get((model, dataset), {}).get(self.key_metric)
        published = self.paper.get((model, dataset), {}).get(self.key_metric)
        return None if cell is None or not published else 100 * (cell.mean - published) / published

    def run_facts(self, model: str, dataset: str) -> tuple[str, str, str]:
        """Epochs trained (per seed, distinct values), whether a training budget stopped a seed, and the commits."""
        records = list(self.runs.get((model, dataset), {}).values())
        epochs = "/".join(sorted({str(r["epochs"]) for r in records if r.get("epochs") is not None}, key=int))
        stopped = "yes" if any(r.get("train_time_limit_reached") for r in records) else "no" if records else ""
        commits = " ".join(sorted({str(r.get("git_commit", "unknown"))[:7] for r in records}))
        return epochs, stopped, commits

    def improvement(self, model: str, dataset: str) -> float | None:
        """Relative improvement (%) of ``model`` over the dataset's baseline on the key metric."""
        base = self.cells.get((self.baselines.get(dataset, ""), dataset), {}).get(self.key_metric)
        cell = self.cells.get((model, dataset), {}).get(self.key_metric)
        if base is None or cell is None or base.mean == 0:
            return None
        return 100 * (cell.mean - base.mean) / base.mean

    def p_value(self, model: str, dataset: str, metric: str) -> float | None:
        """Paired t-test over the seeds that ``model`` and the baseline share (at least 2), else None."""
        baseline = self.baselines.get(dataset)
        if model == baseline:
            return None
        base = self.cells.get((baseline or "", dataset), {}).get(metric)
        cell = self.cells.get((model, dataset), {}).get(metric)
        if base is None or cell is None:
            return None
        seeds = sorted(set(base.by_seed) & set(cell.by_seed))
        if len(seeds) < 2:
            return None
        from scipy.stats import ttest_rel

        p = float(ttest_rel([cell.by_seed[s] for s in seeds], [base.by_seed[s] for s in seeds]).pvalue)
        return None if math.isnan(p) else p


def metric_key(name: str) -> str:
    """RecBole's metric key for a name given on the command line (``HR@10`` → ``hit@10``)."""
    match = METRIC.match(name.strip().lower())
    if not match:
        raise ConfigError(f"metric {name!r} is not of the form name@k — use e.g. hr@10 or ndcg@10")
    return f"{ALIASES.get(match['name'], match['name'])}@{match['k']}"


def metric_label(key: str) -> str:
    name, k = key.split("@")
    return f"{LABELS.get(name, name.upper())}@{k}"


def record_problem(record: Any) -> str | None:
    """What keeps ``record`` from being a result record, or None: model and dataset names, ``test`` (and the
    per-group ``test_warm``/``test_cold`` when present) metrics as finite numbers."""
    if not (isinstance(record, dict) and isinstance(record.get("test"), dict)
            and all(key in record for key in ("model", "dataset"))):
        return "is not a result record (model, dataset, test)"
    if not all(isinstance(record[key], str) for key in ("model", "dataset")):
        return f"has model {record['model']!r} and dataset {record['dataset']!r}, not names"
    for split in SPLITS.values():
        metrics = record.get(split, {})
        if not isinstance(metrics, dict):
            return f"has {split} {metrics!r:.60}, not a mapping of metrics"
        bad = {name: value for name, value in metrics.items()
               if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))}
        if bad:
            name, value = next(iter(bad.items()))
            return f"has {split} metric {name} = {value!r:.40}, not a finite number"
    return None


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Result records from ``.jsonl`` files (one per line) or JSON files (a list, or ``{"results": [...]}``)."""
    records: list[dict[str, Any]] = []
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"results file {path} not found — pass results.jsonl files written by recbole-qrec runs")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MalformedDataError(f"{path} is not UTF-8 text (a binary file?) — pass results.jsonl files written by "
                                     "recbole-qrec runs") from None
        where = ""
        try:
            if path.suffix == ".jsonl":
                found = []
                for i, line in enumerate(text.splitlines(), 1):
                    where = f" line {i}"
                    if line.strip():
                        found.append((f"line {i}", json.loads(line)))
            else:
                data = json.loads(text)
                data = data.get("results", data) if isinstance(data, dict) else data
                found = [(f"record {i}", r) for i, r in enumerate(data if isinstance(data, list) else [data], 1)]
        except json.JSONDecodeError as err:
            position = where or f" line {err.lineno}"
            raise MalformedDataError(f"{path}{position} is not valid JSON ({err.msg}) — correct or delete that line, or "
                                     "pass results.jsonl files written by recbole-qrec runs") from None
        for where, record in found:
            problem = record_problem(record)
            if problem:
                raise MalformedDataError(f"{path} {where} {problem} — correct or delete that record, or pass "
                                         "results.jsonl files written by recbole-qrec runs")
            records.append(record)
    if not records:
        raise MalformedDataError(f"no result records in {', '.join(map(str, paths))} — run a model first "
                                 "(recbole-qrec --model=SASRec) or pass other results files")
    return records


def configuration(record: dict[str, Any]) -> str:
    """The configuration a record ran: its settings that are set, so that a key added later with ~ (unset) as its
    default leaves the records made before it in the configuration of those made after; the record's ``config_hash``
    when it was recorded without its settings."""
    settings = record.get("settings")
    if not isinstance(settings, dict):
        return f"config_hash {record.get('config_hash')}"
    return json.dumps({key: value for key, value in settings.items() if value is not None}, sort_keys=True)


def chosen_runs(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """Per ``(model, dataset)``: the records by seed of its configuration with the most seeds (a tie: the one run
    later; a repeated seed: the later record)."""
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: str(r.get("finished_at", ""))):
        key = (record["model"], record["dataset"], configuration(record))
        groups.setdefault(key, {})[record.get("seed")] = record
    chosen: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for (model, dataset, _), seeds in groups.items():
        if len(seeds) >= len(chosen.get((model, dataset), {})):
            chosen[(model, dataset)] = seeds
    return chosen


def setting_text(value: Any) -> str:
    """A setting's value as a label shows it: strings bare, other values as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def per_configuration(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with each model that ran in several configurations renamed per configuration, ``Model (key=value,
    ...)``: the settings (records' ``settings``) in which that model's configurations on one dataset differ, so that
    one configuration keeps one row across the datasets; a configuration recorded without its settings is named by its
    ``config_hash``."""
    settings: dict[tuple[str, str, str], dict[str, Any] | None] = {}
    for record in records:
        settings.setdefault((record["model"], record["dataset"], configuration(record)), record.get("settings"))
    differing: dict[str, set[str]] = {}  # per model
    for model, dataset in {(model, dataset) for model, dataset, _ in settings}:
        known = [value for (m, d, _), value in settings.items() if (m, d) == (model, dataset) and value is not None]
        keys = {key for value in known for key in value}
        differing.setdefault(model, set()).update(
            key for key in keys if len({json.dumps(value.get(key), sort_keys=True) for value in known}) > 1)
    several = {model for model in differing
               if len({key[2] for key in settings if key[0] == model}) > 1}

    def label(record: dict[str, Any]) -> str:
        model, known = record["model"], record.get("settings")
        if model not in several:
            return model
        if known is None:
            return f"{model} (config {record.get('config_hash')})"
        shown = ", ".join(f"{key}={setting_text(known.get(key))}" for key in sorted(differing[model]))
        return f"{model} ({shown})" if shown else model

    return [{**record, "model": label(record)} for record in records]


def configuration_cells(runs: dict[tuple[str, str], dict[int, dict[str, Any]]], metrics: list[str],
                        split: str = "all") -> dict[tuple[str, str], dict[str, Cell]]:
    """Per ``(model, dataset)``: each metric of its runs (:func:`chosen_runs`) over the seeds, on the test targets
    of ``split``."""
    key = SPLITS[split]
    cells: dict[tuple[str, str], dict[str, Cell]] = {}
    for (model, dataset), seeds in runs.items():
        for metric in metrics:
            missing = [r for r in seeds.values() if metric not in r[key]]
            if missing:
                raise ConfigError(f"{model} on {dataset} has no {key} metric {metric} (it has "
                                  f"{', '.join(sorted(missing[0][key])) or 'none: no such test user'}) — choose "
                                  "--metrics among those")
        cells[(model, dataset)] = {m: Cell({s: float(r[key][m]) for s, r in seeds.items()}) for m in metrics}
    return cells


def load_paper(path: Path) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, str]]:
    """Published numbers by ``(model, dataset)`` and each model's source, from a paper YAML (see properties/paper.yaml)."""
    if not path.is_file():
        raise ConfigError(f"paper file {path} not found — pass a YAML like recbole_qrec/properties/paper.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise MalformedDataError(f"{path} is not valid YAML ({single_line(err)}) — fix it or drop --paper") from None
    values: dict[tuple[str, str], dict[str, float]] = {}
    sources: dict[str, str] = {}
    try:
        for model, entry in data.items():
            sources[model] = str(entry["source"])
            for dataset, metrics in entry["results"].items():
                values[(model, dataset)] = {metric_key(m): float(v) for m, v in metrics.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise MalformedDataError(f"{path} is not model → {{source, results: dataset → metric → value}} — "
                                 "see recbole_qrec/properties/paper.yaml") from None
    return values, sources


def build_table(records: list[dict[str, Any]], metrics: list[str], key_metric: str = "ndcg@10",
                baseline: str | None = None, paper: Path | None = None, tokenizer: bool = False,
                split: str = "all") -> Table:
    """The table of ``records``: models in first-seen order, each dataset's baseline (``baseline``, else the best
    of GRU4Rec/SASRec/BERT4Rec/FDSA present on ``key_metric``), the published numbers of ``paper``, with
    ``tokenizer`` the code-table columns; the cells on the test targets of ``split`` (:data:`SPLITS`: only the
    records that have them)."""
    if split != "all":
        records = [r for r in records if isinstance(r.get(SPLITS[split]), dict)]
        if not records:
            raise ConfigError(f"no record has {SPLITS[split]} (--split {split}) — run the models with "
                              "--cold_start_share=0.1, or use --split all")
    runs = chosen_runs(records)
    cells = configuration_cells(runs, sorted(set(metrics) | {key_metric}), split)
    models = list(dict.fromkeys(r["model"] for r in records))
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    if baseline is not None and baseline not in models:
        raise ConfigError(f"baseline {baseline} has no results — choose one of {', '.join(models)}")
    baselines: dict[str, str] = {}
    for dataset in datasets:
        candidates = [baseline] if baseline else [m for m in BASELINES if (m, dataset) in cells]
        present = [m for m in candidates if (m, dataset) in cells]
        if present:
            baselines[dataset] = max(present, key=lambda m: cells[(m, dataset)][key_metric].mean)
    table = Table(models, datasets, list(metrics), key_metric, cells, baselines, runs=runs, tokenizer=tokenizer,
                  split=split)
    if paper is not None:
        values, sources = load_paper(paper)
        table.paper = {key: v for key, v in values.items() if key[1] in datasets}
        table.sources = {m: s for m, s in sources.items() if any(key[0] == m for key in table.paper)}
        table.models += [m for m in table.sources if m not in table.models]
    return table


def value_text(cell: Cell, tex: bool = False) -> str:
    if cell.std is None:
        return f"{cell.mean:.4f}"
    return f"{cell.mean:.4f}{{\\scriptsize$\\pm${cell.std:.4f}}}" if tex else f"{cell.mean:.4f} ± {cell.std:.4f}"


def percent_sign(tex: bool) -> str:
    return "\\%" if tex else "%"


def metric_text(table: Table, model: str, dataset: str, metric: str, tex: bool = False) -> str:
    """A md/tex metric cell: mean ± std, bold when best and underlined when second in its dataset's column, † when
    significantly different from the baseline."""
    cell = table.cells.get((model, dataset), {}).get(metric)
    text = value_text(cell, tex) if cell else ""
    place = table.rank(model, dataset, metric)
    bold, under = (("\\textbf{%s}", "\\underline{%s}") if tex else ("**%s**", "<u>%s</u>"))
    text = bold % text if place == 1 else under % text if place == 2 else text
    p = table.p_value(model, dataset, metric)
    return text + (("$^\\dagger$" if tex else MARK) if p is not None and p < SIGNIFICANCE else "")


def improvement_text(table: Table, model: str, dataset: str, tex: bool = False) -> str:
    """A md/tex Δ cell: ``baseline`` for the dataset's baseline, else the relative improvement in %."""
    if model == table.baselines.get(dataset):
        return "baseline"
    gain = table.improvement(model, dataset)
    return f"{gain:+.1f}{percent_sign(tex)}" if gain is not None else ""


def display_rows(table: Table, tex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the md/tex table: per dataset, n, the metrics, Δ and the paper's numbers."""
    paper_metrics = table.paper_metrics()
    header = ["Model"]
    for dataset in table.datasets:
        header += [f"{dataset} n", *(f"{dataset} {metric_label(m)}" for m in table.metrics), f"{dataset} Δ"]
        header += [f"{dataset} paper {metric_label(m)}" for m in paper_metrics]
        header += [f"{dataset} {name}" for name in TOKENIZER_COLUMNS if table.tokenizer]
    rows = []
    for model in table.models:
        row = [model]
        for dataset in table.datasets:
            n = table.n(model, dataset)
            row.append(str(n) if n else "")
            row += [metric_text(table, model, dataset, metric, tex) for metric in table.metrics]
            row.append(improvement_text(table, model, dataset, tex))
            row += [f"{table.paper[(model, dataset)][m]:.4f}" if m in table.paper.get((model, dataset), {}) else ""
                    for m in paper_metrics]
            if table.tokenizer:
                row += [f"{value:.4f}" if value is not None else "" for value in table.tokenizer_values(model, dataset)]
        rows.append(row)
    return header, rows


def long_rows(table: Table, tex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the long md/tex table: a row per model and dataset with its metrics, the paper's numbers,
    the difference to the paper, Δ, epochs, budget stop and commits."""
    paper_metrics = table.paper_metrics()
    header = ["Model", "Dataset", "n", *map(metric_label, table.metrics),
              *(f"paper {metric_label(m)}" for m in paper_metrics)]
    header += [f"vs paper {metric_label(table.key_metric)}"] if paper_metrics else []
    header += ["Δ", "epochs", "budget stopped", "commit"]
    rows = []
    for model, dataset in table.cell_keys():
        row = [model, dataset, str(table.n(model, dataset) or "")]
        row += [metric_text(table, model, dataset, metric, tex) for metric in table.metrics]
        published = table.paper.get((model, dataset), {})
        row += [f"{published[m]:.4f}" if m in published else "" for m in paper_metrics]
        if paper_metrics:
            versus = table.versus_paper(model, dataset)
            row.append(f"{versus:+.1f}{percent_sign(tex)}" if versus is not None else "")
        row.append(improvement_text(table, model, dataset, tex))
        rows.append(row + list(table.run_facts(model, dataset)))
    return header, rows


def table_rows(table: Table, tex: bool = False) -> tuple[list[str], list[list[str]]]:
    """The md/tex header and rows of the table's layout."""
    return long_rows(table, tex) if table.layout == "long" else display_rows(table, tex)


def notes(table: Table, tex: bool = False) -> list[str]:
    """What the marks and columns mean, and where the papers' numbers come from."""
    bases = ", ".join(f"{table.baselines[d]} on {d}" for d in table.datasets if d in table.baselines) or "none"
    targets = "" if table.split == "all" else f" of the users whose test target is a {table.split} item (cold start)"
    lines = [(f"Test metrics{targets}, mean ± std over n seeds (std when n > 1); best per column in bold, second underlined. "
              f"Δ: relative improvement in {metric_label(table.key_metric)} over the baseline ({bases}). "
              f"{MARK}: p < {SIGNIFICANCE} in a paired t-test over the seeds shared with the baseline.")]
    lines += [f"Paper ({model}): {source}" for model, source in table.sources.items()]
    if table.tokenizer:
        lines.append("Collisions before / after: share of items whose semantic ID another item shares, before and "
                     "after de-duplication (TIGER's extra level; MQL4GRec under eval_rule group keeps shared IDs); "
                     "utilisation: share of the codebook used, mean over the levels; of the main code table (TIGER: "
                     "sid_source, MQL4GRec: text, QBert4Rec: its .sid).")
    lines += provenance(table)
    return [tex_escape(line) for line in lines] if tex else lines


def runs_line(records: list[dict[str, Any]]) -> str:
    """``Runs: <n> records; commit ...; machine ...; finished <dates>.`` of non-empty ``records``."""
    commits = sorted({str(r.get("git_commit", "unknown"))[:7] + (" (uncommitted changes)" if r.get("git_dirty") else "")
                      for r in records})
    machines = sorted({str(r.get("machine") or r.get("device", "unknown")) for r in records})
    dates = sorted(str(r.get("finished_at", ""))[:10] for r in records)
    return (f"Runs: {len(records)} records; commit {', '.join(commits)}; machine {', '.join(machines)}; "
            f"finished {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") + ".")


def provenance(table: Table) -> list[str]:
    """Where the measured cells come from: the command, the records' commits, machines and dates, and the content
    (semantic-ID sources) each dataset's runs used when it was not the dataset's own text/image codes."""
    records = [record for seeds in table.runs.values() for record in seeds.values()]
    if not records:
        return []
    lines = [runs_line(records)]
    if table.command:
        lines.insert(0, f"Command: `{table.command}`")
    content = {f"{dataset}: no {field}" if source == "missing" else f"{dataset}: {field} from {source}" for r in records
               for dataset, fields in (r.get("content_sources") or {}).items()
               for field, source in fields.items() if not source.startswith(("text:", "image:"))}
    if content:
        lines.append("Content: " + "; ".join(sorted(content)) + ".")
    rules = {f"{r['model']} {r['eval_rule']}" for r in records if r.get("eval_rule")}
    if rules:
        lines.append("Shared semantic IDs (eval_rule; group: a generated ID shared with the target counts as a hit, "
                     "strict: only the target's own ID): " + ", ".join(sorted(rules)) + ".")
    modes = {f"{r['model']} {r['eval_mode']}" for r in records if r.get("eval_mode")}
    if modes:
        lines.append("Ranking (eval_mode; beam: constrained beam search, items outside the beam rank last, exact: every "
                     "item by its semantic ID's log-probability): " + ", ".join(sorted(modes)) + ".")
    budgeted: dict[str, set[int]] = {}
    for r in records:
        if r.get("train_time_limit_reached"):
            budgeted.setdefault(f"{r['model']} on {r['dataset']}", set()).add(r["epochs"])
    if budgeted:
        runs = [f"{run} ({'/'.join(map(str, sorted(epochs)))} epoch{'' if epochs == {1} else 's'})"
                for run, epochs in sorted(budgeted.items())]
        lines.append("Stopped by their training budget (train_time_limit) before early stopping, so not converged: "
                     + ", ".join(runs) + ".")
    discarded = {f"{r['model']} on {r['dataset']} (seed {r['seed']})" for r in records if r.get("pretraining_discarded")}
    if discarded:
        lines.append("Pretraining stalled and was discarded (discard_stalled_pretraining), so fine-tuned from the "
                     "initial weights, as without pretraining: " + ", ".join(sorted(discarded)) + ".")
    return lines


def tex_escape(text: str) -> str:
    return (text.replace("%", "\\%").replace("_", "\\_").replace("&", "\\&").replace("±", "$\\pm$")
            .replace(MARK, "$^\\dagger$").replace("Δ", "$\\Delta$"))


def render_md(table: Table) -> str:
    header, rows = table_rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes(table)) + "\n"


def metric_csv_cells(table: Table, model: str, dataset: str, metric: str) -> list[str]:
    """A metric's CSV cells: mean, std (one seed: empty) and p-value against the baseline."""
    cell = table.cells.get((model, dataset), {}).get(metric)
    p = table.p_value(model, dataset, metric)
    return [f"{cell.mean:.6f}" if cell else "", f"{cell.std:.6f}" if cell and cell.std is not None else "",
            f"{p:.4g}" if p is not None else ""]


def render_long_csv(table: Table) -> str:
    """Plain numbers, a row per model and dataset: seeds, each metric's mean (named as in the md table, e.g. hr@10),
    std and p-value against the baseline, the paper's (paper_hr@10), the difference to the paper and Δ in %, epochs,
    budget stop and commits."""
    paper_metrics = table.paper_metrics()
    header = ["model", "dataset", "seeds"]
    header += [f"{metric_label(m).lower()}{part}" for m in table.metrics for part in ("", " std", " p")]
    header += [f"paper_{metric_label(m).lower()}" for m in paper_metrics]
    header += ["vs paper %", "improvement %", "epochs", "budget stopped", "commit"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for model, dataset in table.cell_keys():
        row: list[Any] = [model, dataset, table.n(model, dataset) or ""]
        for m in table.metrics:
            row += metric_csv_cells(table, model, dataset, m)
        row += [table.paper.get((model, dataset), {}).get(m, "") for m in paper_metrics]
        versus, gain = table.versus_paper(model, dataset), table.improvement(model, dataset)
        row += [f"{versus:.2f}" if versus is not None else "", f"{gain:.2f}" if gain is not None else ""]
        writer.writerow(row + list(table.run_facts(model, dataset)))
    return out.getvalue()


def render_csv(table: Table) -> str:
    """Plain numbers: per dataset n, each metric's mean, std and p-value against the baseline, Δ %, the paper's."""
    if table.layout == "long":
        return render_long_csv(table)
    paper_metrics = table.paper_metrics()
    header = ["model"]
    for d in table.datasets:
        header += [f"{d} n"] + [f"{d} {m} {part}" for m in table.metrics for part in ("mean", "std", "p")]
        header += [f"{d} improvement %", *(f"{d} paper {m}" for m in paper_metrics)]
        header += [f"{d} {name}" for name in TOKENIZER_COLUMNS if table.tokenizer]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for model in table.models:
        row: list[Any] = [model]
        for d in table.datasets:
            row.append(table.n(model, d) or "")
            for m in table.metrics:
                row += metric_csv_cells(table, model, d, m)
            gain = table.improvement(model, d)
            row.append(f"{gain:.2f}" if gain is not None else "")
            row += [table.paper.get((model, d), {}).get(m, "") for m in paper_metrics]
            if table.tokenizer:
                row += [f"{value:.6f}" if value is not None else "" for value in table.tokenizer_values(model, d)]
        writer.writerow(row)
    return out.getvalue()


def render_tex(table: Table) -> str:
    """A booktabs ``tabular``: one column group per dataset (long layout: one row per model and dataset)."""
    header, rows = table_rows(table, tex=True)
    if table.layout == "long":
        lines = [f"\\begin{{tabular}}{{ll{'r' * (len(header) - 2)}}}", "\\toprule",
                 " & ".join(map(tex_escape, header)) + " \\\\", "\\midrule"]
        lines += [" & ".join([*map(tex_escape, row[:2]), *row[2:-1], tex_escape(row[-1])]) + " \\\\" for row in rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines + [f"% {line}" for line in notes(table, tex=True)]) + "\n"
    width = (len(header) - 1) // len(table.datasets)
    groups = " & ".join(f"\\multicolumn{{{width}}}{{c}}{{{tex_escape(d)}}}" for d in table.datasets)
    rules = " ".join(f"\\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(table.datasets)))
    names = [tex_escape(h.split(" ", 1)[1]) for h in header[1:]]
    lines = [f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule", f" & {groups} \\\\", rules,
             "Model & " + " & ".join(names) + " \\\\", "\\midrule"]
    lines += [" & ".join([tex_escape(row[0]), *row[1:]]) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines + [f"% {line}" for line in notes(table, tex=True)]) + "\n"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    matplotlib = required_module("matplotlib", "--format png and curves", "pip install 'matplotlib>=3.7' (a "
                                 "dependency of recbole-qrec, which pip install recbole-qrec brings)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(table: Table, path: Path, metric: str | None = None) -> Path:
    """Grouped bars of ``metric`` (default the key metric): one group per dataset, one bar per model with its std."""
    plt = pyplot()
    metric = metric or table.key_metric
    models = table.measured_models()
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=150)
    for i, model in enumerate(models):
        cells = [table.cells.get((model, d), {}).get(metric) for d in table.datasets]
        stds = [c.std if c and c.std is not None else 0.0 for c in cells]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in range(len(table.datasets))],
               [c.mean if c else 0.0 for c in cells], width, yerr=stds if any(stds) else None, capsize=2, label=model,
               color=f"C{i % 10}")
    ax.set_xticks(range(len(table.datasets)), table.datasets)
    ax.set_xlabel("Dataset")
    ax.set_ylabel(f"Test {metric_label(metric)} (0–1, mean ± std over seeds)")
    ax.set_title(f"Test {metric_label(metric)} by model and dataset")
    ax.legend(title="Model", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def valid_curve(seeds: dict[int, dict[str, Any]], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs trained (1: after the first) and the mean and std over seeds of validation ``metric`` after each,
    from the records' ``valid_curve`` (empty lists when none has one)."""
    by_epoch: dict[int, list[float]] = {}
    for record in seeds.values():
        for point in record.get("valid_curve") or []:
            if metric in point:
                by_epoch.setdefault(int(point["epoch"]) + 1, []).append(float(point[metric]))
    epochs = sorted(by_epoch)
    return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
            [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])


def plot_curves(table: Table, path: Path, metric: str | None = None) -> Path:
    """Validation ``metric`` (default the key metric) after each evaluated epoch: one panel per dataset, one line per
    model (mean over its seeds, the band ± std), 1200 px wide for up to two datasets and 600 px more for each other."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    metric = metric or table.key_metric
    curves = {key: valid_curve(seeds, metric) for key, seeds in table.runs.items()}
    datasets = [d for d in table.datasets if any(curves.get((m, d), ([],))[0] for m in table.models)]
    if not datasets:
        raise ConfigError(f"no record has a validation curve of {metric} (valid_curve) — pass records of runs that "
                          f"evaluated {metric} on the validation split, or leave curves out of --format")
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(8.0, 4.0 * len(datasets)), 4.0), dpi=150, squeeze=False)
    lines = {}
    for ax, dataset in zip(axes[0], datasets):
        last = 1
        for i, model in enumerate(table.measured_models()):
            epochs, means, stds = curves.get((model, dataset), ([], [], []))
            if not epochs:
                continue
            last = max(last, epochs[-1])
            color = f"C{i % 10}"
            lines[model] = ax.plot(epochs, means, marker="o", markersize=3, color=color, label=model)[0]
            if any(stds):
                ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.2, linewidth=0)
        ax.set_title(dataset)
        ax.set_xlabel("Epochs trained")
        ax.set_ylabel(f"Validation {metric_label(metric)} (0–1)")
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    legend_width = 1.6 / fig.get_figwidth()  # inches kept free on the right for the legend
    fig.legend(lines.values(), lines.keys(), title="Model", fontsize="small", loc="upper right")
    fig.suptitle(f"Validation {metric_label(metric)} per epoch (mean ± std over seeds)")
    fig.tight_layout(rect=(0, 0, 1 - legend_width, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def write_outputs(table: Table, formats: list[str], prefix: Path, plot_metric: str | None = None) -> list[Path]:
    """Write ``<prefix>.<format>`` for each format (``<prefix>.curves.png`` for curves); returns the paths written."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    renderers = {"md": render_md, "csv": render_csv, "tex": render_tex}
    plots = {"png": plot_bars, "curves": plot_curves}
    for fmt in formats:
        path = prefix.with_name(f"{prefix.name}.{SUFFIXES.get(fmt, fmt)}")
        if fmt in plots:
            plots[fmt](table, path, plot_metric)
        else:
            path.write_text(renderers[fmt](table), encoding="utf-8")
        written.append(path)
    return written


# The command-line options of a table, shared by ``recbole-qrec table`` and ``recbole-qrec compare``

def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a table's layout, metrics, baseline, published numbers and output files."""
    parser.add_argument("--by", default="model,dataset", choices=list(LAYOUTS),
                        help="rows,column groups: model,dataset (a row per model, the datasets side by side) or "
                        "model+dataset (a row per model and dataset, e.g. beside the papers' numbers)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated test metrics, e.g. hr@1,hr@5,hr@10,ndcg@5,ndcg@10 (hr is hit)")
    parser.add_argument("--format", default="md", help=f"comma-separated, among {','.join(FORMATS)} (png: bars of "
                        "--metric per dataset; curves: validation --metric per epoch, <out>.curves.png)")
    parser.add_argument("--out", type=Path, help="write <out>.<format> for each format (md is printed as well)")
    parser.add_argument("--paper", type=Path, metavar="YAML",
                        help="add the papers' numbers from this YAML; paper.yaml without such a file in the working "
                        "folder is the shipped properties/paper.yaml")
    parser.add_argument("--baseline", help="model to compare against (default: the best of GRU4Rec, SASRec, "
                        "BERT4Rec, FDSA present, per dataset)")
    parser.add_argument("--metric", default="ndcg@10", help="metric of the improvement column and the plots")
    parser.add_argument("--split", choices=list(SPLITS), default="all", help="test targets of the cells: all, or "
                        "the users whose target is a warm or a cold item (records of runs with cold_start_share)")
    parser.add_argument("--tokenizer", action="store_true", help="add per dataset the collision rate before and after "
                        "de-duplication and the mean codebook utilisation of each semantic-ID model's main code table")
    parser.add_argument("--configurations", action="store_true", help="a row per configuration of a model that ran "
                        "in several (e.g. an ablation), named by the settings in which they differ; without it a model "
                        "shows its configuration with the most seeds")


@dataclass(frozen=True)
class TableRequest:
    """What a table shows and where it is written, checked by :func:`table_request`."""

    metrics: list[str]
    key_metric: str
    formats: list[str]
    out: Path | None
    paper: Path | None
    baseline: str | None
    tokenizer: bool = False
    command: str | None = None  # the command line, shown under the table
    split: str = "all"
    layout: str = "wide"  # LAYOUTS
    configurations: bool = False  # a row per configuration (per_configuration)


def table_request(args: argparse.Namespace) -> TableRequest:
    """The checked request of the options of :func:`add_output_arguments` (the paper file is read once here)."""
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown --format {','.join(unknown) or args.format!r} — use some of {','.join(FORMATS)}")
    if set(formats) - {"md"} and args.out is None:
        raise ConfigError("--format csv, png, tex and curves write files — add --out PREFIX")
    if {"png", "curves"} & set(formats):
        pyplot()  # a missing matplotlib stops the command before any file is written
    if args.out is not None:
        check_output_folder(args.out.parent, f"--out {args.out} cannot be written", "give an --out prefix in a folder")
    paper = args.paper
    if paper is not None and not paper.is_file() and paper == Path(PAPER_FILE.name):
        paper = PAPER_FILE
    if paper is not None:
        load_paper(paper)
    metrics = [metric_key(m) for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise ConfigError(f"--metrics {args.metrics!r} names no metric — give comma-separated metrics, e.g. "
                          f"--metrics {','.join(DEFAULT_METRICS)}")
    twice = repeated(metrics)
    if twice:
        raise ConfigError(f"--metrics {args.metrics} names {', '.join(twice)} more than once (hr is hit) — name each "
                          "metric once")
    return TableRequest(metrics, metric_key(args.metric), formats, args.out, paper, args.baseline, args.tokenizer,
                        getattr(args, "command", None), args.split, LAYOUTS[args.by], args.configurations)


def publish(records: list[dict[str, Any]], request: TableRequest) -> Table:
    """Build the table of ``records``, print it as markdown and write the files of ``request``."""
    if request.configurations:
        records = per_configuration(records)
    built = build_table(records, request.metrics, request.key_metric, request.baseline, request.paper,
                        request.tokenizer, request.split)
    built.command, built.layout = request.command, request.layout
    written = write_outputs(built, request.formats, request.out) if request.out is not None else []
    print(render_md(built), end="")
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return built
