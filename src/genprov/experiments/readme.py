"""The README's tables of measured figures, generated from the committed ``results/*.json``.

``README.md`` quotes a reproduction inside ``<!-- results: results/NAME.json -->`` ... ``<!-- /results -->``.
Each table in such a block sits between ``<!-- table: KIND -->`` and ``<!-- /table -->`` and is exactly
what ``README_TABLES[KIND]`` renders from that results file, so a table cannot drift from its run (a test
checks it, and every other decimal figure in the block, against the file). After re-running a reproduction
and publishing its ``results.json`` into ``results/``::

    python -m genprov.experiments.readme --publish runs/x/results.json results/x.json   # curves thinned
    python -m genprov.experiments.readme            # rewrite the tables of README.md in place
    python -m genprov.experiments.readme --check    # exit 1 if a table differs from its results file
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from genprov.eval.stats import holm_adjust
from genprov.exceptions import DataError
from genprov.utils.io import atomic_write_text

__all__ = ["CURVE_KEYS", "README_TABLES", "block_results", "publish", "render_readme"]

Results = Mapping[str, Any]

#: Family-wise error level of the Holm-adjusted verdicts.
HOLM_LEVEL = 0.05

BLOCK = re.compile(r"<!-- results: (?P<paths>[^>]+?) -->(?P<body>.*?)<!-- /results -->", re.S)
TABLE = re.compile(r"(?P<open><!-- table: (?P<kind>[\w-]+) -->\n)(?P<table>.*?)(?P<close><!-- /table -->)", re.S)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (one line per row, ending with a newline)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals (``n/a`` for a missing value)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _one(rows: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any]:
    found = [row for row in rows if all(row.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise DataError(f"expected one results row with {match}; found {len(found)}.")
    return found[0]


def similarity_retrieval(data: Results) -> str:
    """Unseen-class retrieval per extractor (protocol A: pool plus own exemplars), with the control and chance."""
    retrieval, control = data["retrieval"], data["control"]
    rows = []
    for name in data["config"]["extractors"]:
        if name in data["skipped_extractors"]:
            continue
        untuned = _one(retrieval, extractor=name, features="untuned", protocol="A", split="unseen", case="all")
        tuned = _one(retrieval, extractor=name, features="tuned", protocol="A", split="unseen", case="all")
        ctrl = _one(control, extractor=name, features="untuned", protocol="A")
        rows.append(
            [name, fmt(untuned["mAP"]), fmt(tuned["mAP"]), fmt(tuned["recall@10"]), fmt(tuned["recall@100"]),
             fmt(ctrl["mAP"])]
        )  # fmt: skip
    chance = data["chance_unseen"]["A"]
    rows.append(["chance", fmt(chance["mAP"]), "", fmt(chance["recall@10"]), fmt(chance["recall@100"]), ""])
    header = ["extractor", "mAP untuned", "mAP tuned", "Recall@10 (tuned)", "Recall@100 (tuned)", "control mAP"]
    return markdown_table(header, rows)


def _range(values: Sequence[float], digits: int) -> str:
    low, high = fmt(min(values), digits), fmt(max(values), digits)
    return low if low == high else f"{low}-{high}"


def keyed_attributability(data: Results) -> str:
    """Attributability per family and test condition (matched strengths, then the earlier absolute ones),
    with PSNR to the root model: the plain family, each robust family under the post-process it was
    trained on, and the variants."""
    metrics, conditions = data["metrics"], [c for c in data["conditions"] if c != "clean"]
    robust = [f"robust-{c}" for c in conditions if f"robust-{c}" in metrics]

    def cell(family: str, condition: str) -> str:
        return fmt(metrics[family][condition]["attributability"]) if condition in metrics.get(family, {}) else ""

    def clean(family: str) -> str:
        m = metrics[family]["clean"]
        return f"{fmt(m['attributability'])} (D {fmt(m['distinguishability'])})"

    rows = [["plain", clean("plain"), *(cell("plain", c) for c in conditions), fmt(data["psnr_to_root"]["plain"], 1)]]
    if robust:
        rows.append(
            ["robust, on the post-process it was trained on",
             _range([metrics[f]["clean"]["attributability"] for f in robust], 3),
             *(cell(f"robust-{c.split('@')[0].removesuffix('-mild')}", c) for c in conditions),
             _range([data["psnr_to_root"][f] for f in robust], 1)]
        )  # fmt: skip
    for variant in data["config"]["variants"]:
        if variant in metrics:
            rows.append([variant, clean(variant), *(cell(variant, c) for c in conditions),
                         fmt(data["psnr_to_root"][variant], 1)])  # fmt: skip
    return markdown_table(["family", "A clean", *conditions, "PSNR to G0 (dB)"], rows)


def _mean(value: Any) -> float:
    return float(value["mean"]) if isinstance(value, Mapping) else float(value)


def _ci(value: Mapping[str, Any], digits: int = 4, signed: bool = False) -> str:
    """``mean [low, high]`` with leading zeros dropped (``.0299 [.0276, .0324]``)."""

    def short(x: float) -> str:
        text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
        return text.replace("0.", ".", 1)

    return f"{short(value['mean'])} [{short(value['low'])}, {short(value['high'])}]"


def gnime_main(data: Results) -> str:
    """The paper's table at the main weight: every attack's MSE (95% interval), SSIM, TCA, distortion and
    top-10% overlap on the test split."""
    table = data["table"]
    rows = []
    for label, threat, attack in (
        ("ExpMI, no defense", "non-adaptive", "ExpMI (no defense)"),
        ("RND, adaptive attacker", "adaptive", "RND"),
        ("GNIME, adaptive attacker", "adaptive", "GNIME"),
        ("RND, non-adaptive attacker", "non-adaptive", "RND"),
        ("GNIME, non-adaptive attacker", "non-adaptive", "GNIME"),
        ("PredMI (predictions only)", "non-adaptive", "PredMI"),
    ):
        row = _one(table[threat], attack=attack)
        extra = (
            [fmt(_mean(row["distortion"]), 4), fmt(_mean(row["top_overlap"]), 2)]
            if attack in ("RND", "GNIME")
            else ["0", "1"]
            if attack.startswith("ExpMI")
            else ["", ""]
        )
        rows.append([label, _ci(row["mse"]), fmt(_mean(row["ssim"])), fmt(_mean(row["tca"])), *extra])
    return markdown_table(["attack (test split)", "MSE", "SSIM", "TCA", "distortion", "top-10% overlap"], rows)


def _versus_rnd(first: str, entry: Mapping[str, Any]) -> list[str]:
    """A row of GNIME against its matched noise: ``first``, the distortion, then per attacker both MSEs, the
    paired difference (GNIME - RND, 95% interval) and its Holm-adjusted p-value."""
    cells = [first, fmt(_mean(entry["gnime"]["distortion"]), 4)]
    for threat in ("non-adaptive", "adaptive"):
        gnime, rnd = _mean(entry["gnime"][threat]["mse"]), _mean(entry["rnd"][threat]["mse"])
        comparison = entry["comparison"][threat]
        cells += [f"{fmt(gnime, 4)} / {fmt(rnd, 4)}", _ci(comparison["mse_gain"], signed=True),
                  fmt(comparison["mse_p_holm"], 4)]  # fmt: skip
    return cells


_VERSUS_HEADER = ["distortion", "non-adaptive: GNIME / RND", "difference", "Holm p", "adaptive: GNIME / RND",
                  "difference", "Holm p"]  # fmt: skip


def gnime_sweep(data: Results) -> str:
    """GNIME against Gaussian noise of the same distortion at every swept weight (Holm over the run's sweep)."""
    return markdown_table(["a", *_VERSUS_HEADER], [_versus_rnd(fmt(p["a"], 0), p) for p in data["sweep"]])


def gnime_ablation(data: Results) -> str:
    """The faithful generator beside the earlier one at the main weight, each against its matched noise."""
    return markdown_table(["generator", *_VERSUS_HEADER], [_versus_rnd(e["variant"], e) for e in data["ablation"]])


def dtrak_lds(data: Results) -> str:
    """LDS (95% interval over test queries) of every method on real and generated queries, the noise ceiling,
    then each study setting's TRAK and D-TRAK (test LDS, the mean cosine between unrelated examples' features,
    and the paired D-TRAK - TRAK difference; every setting shown, so picking one here would be post hoc)."""
    methods, kinds = data["lds"]["methods"], ("real", "generated")
    cosine = data.get("unrelated_feature_cosine", {})
    rows = [[name, *(_ci(methods[k][name]["lds"], 3) for k in kinds),
             fmt(cosine[name]) if name in cosine else ""] for name in methods["real"]]  # fmt: skip
    rows.append(["noise ceiling (seed vs seed)", *(_ci(data["lds"]["noise_ceiling"][k], 3) for k in kinds), ""])
    for row in data["variant_study"]:
        if "paired difference" in row:
            if row["method"].startswith("D-TRAK - TRAK"):
                kind = "real" if row["method"].endswith("(real)") else "generated"
                cells = ["", ""]
                cells[kinds.index(kind)] = _ci(row["paired difference"], 3, signed=True)
                rows.append([f"D-TRAK - TRAK, {row['setting']} (post hoc)", *cells, ""])
            continue
        cos = row.get("unrelated feature cosine")
        rows.append(
            [f"{row['method']}, {row['setting']} (post hoc)",
             *(_ci(row[f"LDS {k}"], 3) if f"LDS {k}" in row else "" for k in kinds),
             fmt(cos) if cos is not None else ""]
        )  # fmt: skip
    return markdown_table(["method (test queries)", "LDS real", "LDS generated", "unrelated cosine"], rows)


def dtrak_chosen(data: Results) -> str:
    """Each method's feature setting chosen on the validation queries, and its test LDS; with the paired
    differences of the base settings."""
    chosen, kinds = data["chosen_on_validation"], ("real", "generated")
    rows = [
        [f"{method} ({kind}: {chosen[kind][method]['setting']})", fmt(chosen[kind][method]["val_lds"]),
         _ci(chosen[kind][method]["lds"], 3)]
        for kind in kinds for method in chosen[kind]
    ]  # fmt: skip
    for kind in kinds:
        for pair, ci in data["lds"]["paired"][kind].items():
            rows.append([f"{pair} ({kind}, base settings)", "", _ci(ci, 3, signed=True)])
    return markdown_table(["method (queries: setting chosen on validation)", "validation LDS", "test LDS"], rows)


def _auc_acc(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "(not run)"
    return f"{fmt(cell['auc'])} / {fmt(cell['acc'])}".replace("0.", ".").replace("1.000", "1.00")


_FLIPAD_TABLES = {
    "Table 1": "1: owner vs real and the other three GAN types",
    "Table 2": "2: owner vs same architecture, other seed",
    "Table 3": "3: Table 1 under every perturbation (mean)",
    "Table 5": "5: tabular GANs (wine, breast cancer)",
}


def flipad_tables(data: Results) -> str:
    """Mean AUC / accuracy at the 0.5% FNR threshold of every method in the paper's tables, then each
    Table 3 perturbation on its own."""
    methods = data["config"]["methods"]
    means = data["table_means"]
    rows = [[label, *(_auc_acc(means[t].get(m)) for m in methods)] for t, label in _FLIPAD_TABLES.items() if t in means]
    for name, by_method in data["table3"].items():
        rows.append([f"3, {name}", *(_auc_acc(by_method[m]["mean"]) if m in by_method else "" for m in methods)])
    return markdown_table(["table", *methods], rows)


def flipad_t2i(data: Results) -> str:
    """AUC / accuracy at the 0.5% FNR threshold of every detector of a text-to-image pipeline (``reproduce
    flipad-t2i``): against real images, another pipeline, their mean, and a pipeline sharing the own VAE."""
    methods = list(data["table4"])
    rows = [[f"{source}", *(_auc_acc(data["table4"][m].get(source)) for m in methods)]
            for source in data["table4"][methods[0]] if source != "mean"]  # fmt: skip
    rows.append(["mean of the two", *(_auc_acc(data["table4"][m]["mean"]) for m in methods)])
    for source in data["shared_vae"][methods[0]]:
        if source != "mean":
            rows.append([source, *(_auc_acc(data["shared_vae"][m].get(source)) for m in methods)])
    return markdown_table(["own pipeline's samples vs", *methods], rows)


def flipad_study(data: Results) -> str:
    """The validation study (own study samples, held-out reals and an unseen GAN): what was chosen."""
    rows = [[row["setting"], fmt(row["mean AUC"]), fmt(row["mean acc"]), "chosen" if row["chosen"] else ""]
            for row in data["study"]]  # fmt: skip
    return markdown_table(["setting (validation sources)", "mean AUC", "mean accuracy", ""], rows)


def gnime_across_runs(data: Results) -> str:
    """Every GNIME-vs-noise comparison of several runs (datasets, explainers; each weight and attacker) with
    its Holm-adjusted p-value over all of them together: what survives the whole family of comparisons."""
    comparisons = [
        (run["config"], point["a"], threat, point["comparison"][threat])
        for run in data["runs"].values()
        for point in run["sweep"]
        for threat in ("non-adaptive", "adaptive")
    ]
    adjusted: list[float] = holm_adjust([c["mse_p_value"] for *_, c in comparisons]).tolist() if comparisons else []
    rows = []
    for (cfg, a, threat, c), p in zip(comparisons, adjusted, strict=True):
        ahead = "GNIME ahead" if c["mse_gain"]["mean"] > 0 else "noise ahead"
        rows.append([f"{cfg['data']}, {cfg['explainer']}", fmt(a, 0), threat, _ci(c["mse_gain"], signed=True),
                     fmt(c["mse_p_value"], 4), fmt(p, 4), ahead if p < HOLM_LEVEL else "no difference"])  # fmt: skip
    header = ["run", "a", "attacker", "GNIME - RND (MSE)", "p", "Holm p (all runs)", f"at {HOLM_LEVEL}"]
    return markdown_table(header, rows)


def dtrak_t2i_paper(data: Results) -> str:
    """The paper's ArtBench-2 LDS beside ours at the same K (test queries, 95% intervals; K = 100 where the
    study ran it), then the paired differences at the base setting."""
    kinds = ("real", "generated")
    study = {(r["setting"], r["method"]): r for r in data["variant_study"] if "paired difference" not in r}
    rows = []
    for row in data["paper"]:
        if row["timesteps"] == data["config"]["n_timesteps"]:
            ours = [_ci(data["lds"]["methods"][k][row["method"]]["lds"], 3) for k in kinds]
        else:
            entry = study.get((f"n_timesteps={row['timesteps']}", row["method"]))
            ours = [_ci(entry[f"LDS {k}"], 3) if entry else "(not run)" for k in kinds]
        rows.append([f"{row['method']}, K = {row['timesteps']}", fmt(row["paper_lds"]), *ours])
    for kind in kinds:
        for pair, ci in data["lds"]["paired"][kind].items():
            rows.append([f"{pair} ({kind}, K = {data['config']['n_timesteps']})", "", *(
                [_ci(ci, 3, signed=True), ""] if kind == "real" else ["", _ci(ci, 3, signed=True)])])  # fmt: skip
    return markdown_table(["method", "paper (ArtBench-2, validation)", "ours real", "ours generated"], rows)


#: Table kind -> its renderer from a results file (the dict of ``results.json``).
README_TABLES: dict[str, Callable[[Results], str]] = {
    "similarity-retrieval": similarity_retrieval,
    "keyed-attributability": keyed_attributability,
    "flipad-tables": flipad_tables,
    "flipad-study": flipad_study,
    "flipad-t2i": flipad_t2i,
    "dtrak-lds": dtrak_lds,
    "dtrak-chosen": dtrak_chosen,
    "dtrak-t2i-paper": dtrak_t2i_paper,
    "gnime-main": gnime_main,
    "gnime-sweep": gnime_sweep,
    "gnime-ablation": gnime_ablation,
    "gnime-across-runs": gnime_across_runs,
}


def block_results(paths: str, root: Path) -> Any:
    """What a block's tables render from: the one results file it names, or, for several (a block quoting
    ``results/a.json results/b.json``), ``{"runs": {"results/a.json": ..., ...}}``.

    Raises:
        DataError: A named file that does not exist under ``root``.
    """
    loaded = {}
    for name in paths.split():
        path = root / name
        if not path.is_file():
            raise DataError(f"README quotes {name}, which does not exist under {root}.")
        loaded[name] = json.loads(path.read_text(encoding="utf-8"))
    return next(iter(loaded.values())) if len(loaded) == 1 else {"runs": loaded}


def render_readme(text: str, root: Path) -> str:
    """``text`` (a README) with every generated table re-rendered from its block's results file under ``root``.

    Raises:
        DataError: A block naming a missing results file, or an unknown table kind.
    """

    def block(match: re.Match[str]) -> str:
        data = block_results(match.group("paths"), root)

        def table(inner: re.Match[str]) -> str:
            kind = inner.group("kind")
            if kind not in README_TABLES:
                raise DataError(f"README table kind {kind!r} is unknown; known: {', '.join(README_TABLES)}.")
            return inner.group("open") + README_TABLES[kind](data) + inner.group("close")

        return match.group(0).replace(match.group("body"), TABLE.sub(table, match.group("body")))

    return BLOCK.sub(block, text)


#: Keys of per-step training curves (GNIME's loss history, D-TRAK's loss curve): :func:`publish` keeps at
#: most ``max_points`` evenly spaced entries of them, first and last included, with 4 significant digits (they
#: are plotted, never quoted). Nothing else is changed.
CURVE_KEYS = frozenset({"gnime_history", "history", "steps", "loss"})


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {key: _round(value) for key, value in obj.items()}
    return [_round(value) for value in obj] if isinstance(obj, list) else obj


def _thin(obj: Any, max_points: int) -> Any:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in CURVE_KEYS and isinstance(value, list) and len(value) > max_points:
                keep = sorted({round(i * (len(value) - 1) / (max_points - 1)) for i in range(max_points)})
                out[key] = [_round(value[i]) for i in keep]
            else:
                out[key] = _thin(value, max_points)
        return out
    if isinstance(obj, list):
        return [_thin(value, max_points) for value in obj]
    return obj


def publish(source: Path, dest: Path, max_points: int = 50) -> None:
    """Copy a run's ``results.json`` to ``dest`` (under ``results/``) with its training curves thinned to
    ``max_points`` (:data:`CURVE_KEYS`); the provenance records the thinning.

    Raises:
        DataError: ``source`` is not a results file with a provenance (made by ``genprov reproduce``).
    """
    if max_points < 2:
        raise DataError(f"max_points must be at least 2; got {max_points}.")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"Cannot read {source} as a results file: {err}.") from None
    if not isinstance(data, dict) or "provenance" not in data:
        raise DataError(f"{source} records no provenance; publish the results.json a 'genprov reproduce' run wrote.")
    thinned = _thin(data, max_points)
    thinned["provenance"] = {**data["provenance"], "published": f"training curves thinned to {max_points} points"}
    atomic_write_text(dest, json.dumps(thinned, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or, with ``--check``, compare) the generated tables of a README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs from its results file")
    parser.add_argument("--publish", nargs=2, type=Path, metavar=("RUN_RESULTS", "DEST"), help="publish a run first")
    args = parser.parse_args(argv)
    if args.publish:
        publish(*args.publish)
    text = args.readme.read_text(encoding="utf-8")
    rendered = render_readme(text, args.readme.resolve().parent)
    if args.check:
        if rendered != text:
            print(f"{args.readme}: generated tables differ from results/; run python -m genprov.experiments.readme")
            return 1
        return 0
    if rendered != text:
        atomic_write_text(args.readme, rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
