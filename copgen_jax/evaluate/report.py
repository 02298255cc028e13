"""The evaluation report: a Markdown table per benchmark (models side by side) and PNG plots.

Calibration (tasks and narrowing levels that carry the ``reliability`` and ``pit`` curves): a
table of nominal against empirical central-interval coverage and a PIT summary under each task
and the narrowing table, ``reliability.png`` (the reliability diagram) and ``pit.png`` (the PIT
histograms), one panel per image modality of a task and per conditioning level."""
from __future__ import annotations

import os

import numpy as np

from copgen_jax import storage

STOCHASTIC_ROWS = ("recall", "precision", "nn_accuracy", "mmd", "wasserstein", "range_coverage",
                   "intra_generated", "intra_real")
IMAGE_ROWS = ("mae", "mae_best_of_n", "mae_ensemble_mean", "rmse", "psnr", "psnr_best_of_n", "ssim",
              "ssim_best_of_n", "crps", "interval_coverage", "spread")
CLASS_ROWS = ("accuracy", "accuracy_best_of_n", "accuracy_mode", "miou", "miou_best_of_n", "miou_mode",
              "disagreement")
NARROWING_ROWS = ("pixel_std", "interval_coverage", "crps", "mae_ensemble_mean")


def fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    mean, std = stat["mean"], stat.get("std")
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _stochastic_md(res: dict, labels: list[str]) -> list[str]:
    lo, hi = min(res["real_per_location"]), max(res["real_per_location"])
    lines = [f"{' + '.join(res['given'])} → {' + '.join(res['generated'])}: {res['locations']} held-out locations, "
             f"K = {lo if lo == hi else f'{lo}–{hi}'} real observations against as many samples each; metrics per "
             "location, mean ± std over locations.", ""]
    rows = []
    for space in ("spectra", "structure"):
        rows += [[f"{space}: {r}"] + [fmt(res["models"][m].get(f"{space}/{r}")) for m in labels] for r in STOCHASTIC_ROWS]
    rows += [[f"pixel std ({w})"] + [fmt(res["models"][m].get(f"pixel_std/{w}")) for m in labels]
             for w in ("real", "generated")]
    return lines + _table(["metric"] + labels, rows)


def _num(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _curves_of(models: dict, labels: list[str], prefix: str = "") -> dict:
    """{M: (reliability, pit)} (means over examples) for the models whose stats hold both curves."""
    out = {}
    for m in labels:
        rel, pit = ((models.get(m) or {}).get(prefix + k) or {} for k in ("reliability", "pit"))
        if isinstance(rel.get("mean"), list) and isinstance(pit.get("mean"), list):
            out[m] = (rel["mean"], pit["mean"])
    return out


def _calibration_md(rows: list[tuple], levels, k: int, first: str) -> list[str]:
    """rows: [(name, model, reliability, pit)] -> the reliability table and the PIT summary."""
    if not rows or not levels:
        return []
    bins = len(rows[0][3])
    lines = ["Calibration: the share of true values inside the central interval of each nominal mass, "
             f"from the truth's randomised rank among the K = {k} samples (calibrated: the mass itself, "
             "whatever K; a model without spread covers only its exact hits); PIT: the histogram of that rank, "
             f"{bins} bins, flat at {1 / bins:.3f} when calibrated (heavy ends: intervals too narrow; one heavy "
             "end: biased). Means over the observations.", ""]
    lines += _table([first, "model"] + [f"{lv:.0%}" for lv in levels],
                    [[a, m] + [_num(v) for v in rel] for a, m, rel, _ in rows]) + [""]
    pit_rows = [[a, m, _num(None if None in (pit[0], pit[-1]) else pit[0] + pit[-1]),
                 " ".join("–" if v is None else f"{v:.2f}" for v in pit)] for a, m, _, pit in rows]
    return lines + _table([first, "model", f"PIT ends (flat: {2 / bins:.3f})", "PIT histogram, low → high"],
                          pit_rows) + [""]


def _task_md(name: str, res: dict, labels: list[str], k: int) -> list[str]:
    lines = [f"### {name}: {res['description']}", "", f"{res['examples']} held-out observations; "
             "mean ± std over them (best_of_n: the best of the N samples; ensemble_mean: the per-pixel "
             "mean or mode of the samples).", ""]
    rows = []
    for n in res["generated"]:
        keys = {k.split("/", 1)[1] for m in labels for k in res["models"][m] if k.startswith(n + "/")}
        order = [r for r in (*IMAGE_ROWS, *CLASS_ROWS) if r in keys]
        rows += [[f"{n}: {r}"] + [fmt(res["models"][m].get(f"{n}/{r}")) for m in labels] for r in order]
    curves = [(n, m, rel, pit) for n in res["generated"]
              for m, (rel, pit) in _curves_of(res["models"], labels, n + "/").items()]
    return (lines + _table(["metric"] + labels, rows) + [""]
            + _calibration_md(curves, res.get("reliability_levels"), k, "modality"))


def _narrowing_md(res: dict, labels: list[str], k: int) -> list[str]:
    lines = [f"Generated: {' + '.join(res['generated'])}; {res['examples']} held-out observations per level "
             "(evaluation units: reflectance); mean ± std over observations.", ""]
    header = ["given", "model", *NARROWING_ROWS]
    rows = [[lv["label"], m] + [fmt(lv["models"][m].get(r)) for r in NARROWING_ROWS]
            for lv in res["levels"] for m in labels]
    lines += _table(header, rows) + [""]
    curves = [(lv["label"], m, rel, pit) for lv in res["levels"]
              for m, (rel, pit) in _curves_of(lv["models"], labels).items()]
    lines += _calibration_md(curves, res.get("reliability_levels"), k, "given")
    return lines + ([f"- skipped {s}" for s in res["skipped"]] if res.get("skipped") else [])


def markdown(results: dict) -> str:
    s = results["settings"]
    labels = list(results["models"])
    models = ", ".join(f"{m} (step {v.get('step')})" for m, v in results["models"].items())
    lines = [f"# Evaluation of {results['workdir']}", "",
             f"Models: {models}. "
             f"{s['samples']} samples per input, {s['sampler']} {s['steps']} steps, seed {s['seed']}, "
             f"split {results['split']} ({results['locations']} locations).", ""]
    bench = results["benchmarks"]
    if "stochastic" in bench:
        lines += ["## Stochastic benchmark", ""]
        lines += ([f"Skipped: {bench['stochastic']['skipped']}"] if "skipped" in bench["stochastic"]
                  else _stochastic_md(bench["stochastic"], labels)) + [""]
    if "tasks" in bench:
        lines += ["## Tasks", ""]
        for name, res in bench["tasks"].items():
            lines += ([f"- {name}: skipped ({res['skipped']})", ""] if "skipped" in res
                      else _task_md(name, res, labels, s["samples"]))
    if "narrowing" in bench:
        lines += ["## Uncertainty as conditioning grows", ""]
        lines += ([f"Skipped: {bench['narrowing']['skipped']}"] if "levels" not in bench["narrowing"]
                  else _narrowing_md(bench["narrowing"], labels, s["samples"])) + [""]
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bars(ax, labels, keys, stats_of, title):
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(keys))
    for i, m in enumerate(labels):
        stats = [stats_of(m, k) or {} for k in keys]
        mean = [st.get("mean") if st.get("mean") is not None else np.nan for st in stats]
        std = [st.get("std") if st.get("std") is not None else 0.0 for st in stats]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, mean, width, yerr=std, capsize=3, label=m)
    ax.set_xticks(x, keys, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend()


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    with storage.local_file(path) as local:
        fig.savefig(local, dpi=110)
    plt.close(fig)
    return path


def plot_stochastic(res: dict, labels: list[str], path: str) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    keys = ("recall", "precision", "nn_accuracy", "range_coverage")
    _bars(axes[0], labels, keys, lambda m, k: res["models"][m].get(f"spectra/{k}"), "band-mean spectra")
    _bars(axes[1], labels, ("intra_real", "intra_generated"), lambda m, k: res["models"][m].get(f"spectra/{k}"),
          "intra-set distance (spectra)")
    ex, ax = res["example"], axes[2]
    a, b = 0, len(ex["bands"]) - 1
    real = np.asarray(ex["real"])
    ax.scatter(real[:, a], real[:, b], c="k", marker="x", label="real", zorder=3)
    for m in labels:
        if m in ex:
            pts = np.asarray(ex[m])
            ax.scatter(pts[:, a], pts[:, b], alpha=0.7, label=m)
    ax.set_xlabel(ex["bands"][a])
    ax.set_ylabel(ex["bands"][b])
    ax.set_title(f"per-image band means at {ex['location']}")
    ax.legend()
    return _save(plt, fig, path)


def plot_tasks(tasks: dict, labels: list[str], path: str) -> str | None:
    done = {n: r for n, r in tasks.items() if "skipped" not in r}
    if not done:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(done), figsize=(4.5 * len(done), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], done.items()):
        first = res["generated"][0]
        have = {k.split("/", 1)[1] for k in res["models"][labels[0]] if k.startswith(first + "/")}
        keys = [k for k in ("mae", "mae_best_of_n", "crps", "accuracy", "accuracy_best_of_n", "miou") if k in have]
        _bars(ax, labels, keys, lambda m, k: res["models"][m].get(f"{first}/{k}"), f"{name}\n{first}")
    return _save(plt, fig, path)


def plot_narrowing(res: dict, labels: list[str], path: str) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = [lv["label"] for lv in res["levels"]]
    x = np.arange(len(names))
    titles = {"pixel_std": "mean per-pixel std of the samples", "interval_coverage": "5–95 % interval coverage",
              "crps": "CRPS"}
    for ax, (key, title) in zip(axes, titles.items()):
        for m in labels:
            st = [lv["models"][m].get(key) or {} for lv in res["levels"]]
            mean = [v.get("mean") if v.get("mean") is not None else np.nan for v in st]
            std = [v.get("std") if v.get("std") is not None else 0.0 for v in st]
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=m)
        if key == "interval_coverage":
            ax.axhline(0.9, color="grey", ls="--", lw=1, label="calibrated (0.9)")
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"Generated {' + '.join(res['generated'])} as conditioning grows")
    return _save(plt, fig, path)


def _grid(plt, n: int, cols: int = 4):
    """A figure of ``n`` panels, at most ``cols`` a row; -> (figure, the n axes)."""
    cols = min(n, cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _values(curve) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in curve], np.float64)


def calibration_panels(bench: dict, labels: list[str]) -> list[tuple[str, list, dict]]:
    """[(title, nominal levels, {M: (reliability, pit)})]: per image modality of each task that has
    the curves, then per narrowing level."""
    panels = []
    for name, res in (bench.get("tasks") or {}).items():
        for n in res.get("generated", ()):
            curves = _curves_of(res["models"], labels, n + "/")
            if curves:
                panels.append((f"{name}\n{n}", res["reliability_levels"], curves))
    nar = bench.get("narrowing") or {}
    for lv in nar.get("levels", ()):
        curves = _curves_of(lv["models"], labels)
        if curves:
            panels.append((f"{' + '.join(nar['generated'])}\ngiven {lv['label']}", nar["reliability_levels"], curves))
    return panels


def plot_reliability(panels: list, k: int, path: str) -> str:
    """Nominal against empirical central-interval coverage, one line per model, one panel each."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels))
    for ax, (title, levels, curves) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label=f"calibrated (K = {k} samples)")
        for m, (rel, _) in curves.items():
            ax.plot(levels, _values(rel), marker="o", label=m)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal interval mass", ylabel="empirical coverage", title=title)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_pit(panels: list, path: str) -> str:
    """PIT histograms, the models' bars side by side, the flat 1/bins line of a calibrated one."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels))
    for ax, (title, _, curves) in zip(axes, panels):
        bins = len(next(iter(curves.values()))[1])
        width = 0.8 / bins / len(curves)
        for i, (m, (_, pit)) in enumerate(curves.items()):
            x = (np.arange(bins) + 0.5) / bins + (i - (len(curves) - 1) / 2) * width
            ax.bar(x, _values(pit), width, label=m)
        ax.axhline(1 / bins, color="grey", ls="--", lw=1, label=f"flat (1/{bins})")
        ax.set(xlim=(0, 1), xlabel="PIT (rank of the truth among the samples)", ylabel="share of pixels", title=title)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def write_plots(results: dict, out: str) -> list[str]:
    labels = list(results["models"])
    bench, paths = results["benchmarks"], []
    if "stochastic" in bench and "skipped" not in bench["stochastic"]:
        paths.append(plot_stochastic(bench["stochastic"], labels, os.fspath(storage.path(out) / "stochastic.png")))
    if "tasks" in bench:
        p = plot_tasks(bench["tasks"], labels, os.fspath(storage.path(out) / "tasks.png"))
        paths += [p] if p else []
    if "narrowing" in bench and "levels" in bench["narrowing"]:
        paths.append(plot_narrowing(bench["narrowing"], labels, os.fspath(storage.path(out) / "narrowing.png")))
    panels = calibration_panels(bench, labels)
    if panels:
        paths.append(plot_reliability(panels, results["settings"]["samples"],
                                      os.fspath(storage.path(out) / "reliability.png")))
        paths.append(plot_pit(panels, os.fspath(storage.path(out) / "pit.png")))
    return paths
