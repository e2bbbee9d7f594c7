"""Data-set explorer: routing and cost over the whole test set, from each model's eval.json."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, ui
from app.analysis import run_pixels
from app.evaluations import eval_command, load_eval
from app.figures import dataset
from app.figures.common import FLOPS_UNIT
from app.figures.routing import gate_heatmap
from app.models import LABELS, MODEL_NAMES, ModelSet, load_models
from drnets.data import DATASET_TITLES
from drnets.evaluate import describe_difficulty

ALL_CELLS = "all cells"


def main() -> None:
    st.title("Data-set explorer")
    st.caption(
        "How DRNet routes the whole test set: which branches each class uses, what each class costs, and how it compares."
    )
    models = load_models(state.settings().models_dir)
    ui.require_drnet(models)
    evals = {name: e for name in MODEL_NAMES if (e := load_eval(models, name))}
    drnet = evals.get("drnet")
    if drnet is None:
        st.info(
            "No evaluation results next to the DRNet yet: this page reads the `eval.json` that the evaluation "
            "command writes (under a minute on a 2-core CPU for 10,000 test images). For this DRNet:"
        )
        st.code(eval_command(models, "drnet"), language="bash", wrap_lines=True)
        return
    st.caption(
        f"{drnet['n']:,} {drnet['split']} images of {DATASET_TITLES.get(drnet['dataset'], drnet['dataset'])}; "
        "DRNet at its evaluation threshold "
        f"t = {drnet['threshold']:.2f}" + (f", top-k {drnet['top_k']}" if drnet.get("top_k") else "") + "."
    )
    with ui.guard("building the headline table"):
        headline_ui(evals)
    with ui.guard("drawing the accuracy per class"):
        ui.chart(
            dataset.class_accuracy_bars(
                {LABELS[n]: pd.DataFrame(e["per_class"]) for n, e in evals.items() if n != "dense"}
            ),
            key="class_accuracy",
        )
    with ui.guard("drawing the FLOPs per class"):
        ui.chart(
            dataset.class_flops_bars(pd.DataFrame(drnet["per_class"]), dense_flops=drnet["dense_flops"]),
            key="class_flops",
        )
        if difficulty := describe_difficulty(drnet.get("difficulty")):
            st.caption(" ".join(difficulty))
    with ui.guard("summing up the routes"):
        routing_ui(drnet, models)
    with ui.guard("drawing the branch usage"):
        usage_ui(drnet)
    with ui.guard("re-running the cheapest and most expensive images"):
        extremes_ui(drnet, models)


def headline_ui(evals: dict[str, dict]) -> None:
    st.markdown("#### Headline")
    reference = evals.get("mobilenetv2")
    rows = []
    for name, e in evals.items():
        row = {
            "model": LABELS[name],
            "accuracy": e["accuracy"],
            f"mean {FLOPS_UNIT}": e["flops_mean"],
            "mean params touched": e["params_used_mean"],
        }
        if reference:
            row["FLOPs vs MobileNetV2"] = e["flops_mean"] / reference["flops_mean"]
            row["params vs MobileNetV2"] = e["params_used_mean"] / reference["params_used_mean"]
        rows.append(row)
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="percent"),
            f"mean {FLOPS_UNIT}": st.column_config.NumberColumn(format="compact"),
            "mean params touched": st.column_config.NumberColumn(format="compact"),
            "FLOPs vs MobileNetV2": st.column_config.NumberColumn(format="percent"),
            "params vs MobileNetV2": st.column_config.NumberColumn(format="percent"),
        },
        key="headline_table",
    )
    st.caption(
        f"For comparison, the paper reports {ui.PAPER_FLOPS_SHARE:.2%} of MobileNetV2's FLOPs and "
        f"{ui.PAPER_PARAMS_SHARE:.2%} of its parameters on CIFAR-10."
    )


def routing_ui(drnet: dict, models: ModelSet) -> None:
    """Do images take different routes, and does the route follow the class? One metric per statistic."""
    st.markdown("#### How much the routes differ")
    if "routing" not in drnet:
        st.info(
            "This eval.json has no routing statistics (distinct routes, edges that vary, FLOPs spread, "
            "route-class information): run `python -m drnets eval ... --out` to compute them. For this DRNet:"
        )
        st.code(eval_command(models, "drnet"), language="bash", wrap_lines=True)
        return
    if not drnet["routing"]:
        st.caption("This network does not route: every image takes the same path and costs the same.")
        return
    table = dataset.routing_table(drnet["routing"], drnet.get("difficulty"))
    for column, row in zip(st.columns(len(table)), table.itertuples(), strict=True):
        column.metric(row.statistic, row.value)
        column.caption(row.meaning)


def usage_ui(drnet: dict) -> None:
    st.markdown("#### Which branches run")
    usage = pd.DataFrame(drnet.get("branch_usage") or [])
    if usage.empty:
        st.caption("No branch usage in eval.json.")
        return
    by_class, by_cell = st.tabs(["By class", "By cell"], key="usage_tab", on_change="rerun")  # the open one is drawn
    if by_class.open:
        with by_class:
            _usage_by_class(usage)
    if by_cell.open:
        with by_cell:
            ui.chart(dataset.branch_usage_heatmap(pd.DataFrame(drnet.get("cell_usage") or [])), key="usage_by_cell")


def _usage_by_class(usage: pd.DataFrame) -> None:
    cells = sorted(usage["cell"].unique())
    cell = st.selectbox(
        "Cell", [ALL_CELLS, *cells], key="usage_cell", format_func=lambda c: c if c == ALL_CELLS else f"cell {c}"
    )
    shown = usage if cell == ALL_CELLS else usage[usage["cell"] == cell]
    ui.chart(dataset.branch_usage_heatmap(shown), key="usage_by_class")


EXTREMES = {"cheapest": "Cheapest", "most_expensive": "Most expensive"}


def extremes_ui(drnet: dict, models: ModelSet) -> None:
    """Pick one of the cheapest and one of the most expensive images; their routes below, full width."""
    st.markdown("#### The cheapest and the most expensive test images")
    extremes = drnet.get("extremes") or {}
    runs = {}
    for column, (kind, title) in zip(st.columns(2), EXTREMES.items(), strict=True):
        items = extremes.get(kind) or []
        with column:
            st.markdown(f"**{title}**")
            if not items:
                st.caption("none recorded")
                continue
            index = st.radio(
                "image",
                range(len(items)),
                format_func=lambda i, items=items: f"#{items[i]['index']} · {ui.si(items[i]['flops'])}",
                horizontal=True,
                key=f"extreme_{kind}",
                label_visibility="collapsed",
            )
            item = items[index]
            runs[kind] = run = run_pixels(
                models, item["pixels"], drnet["threshold"], drnet.get("top_k"), drnet.get("budget")
            )
            picture, text = st.columns([1, 2])
            picture.image(ui.pixelated(item["pixels"], 112))
            text.markdown(
                f"true class **{models.class_names[item['label']]}**, DRNet said **{models.class_names[run.pred]}**  \n"
                f"{ui.si(run.flops)} {FLOPS_UNIT}, {run.flops / run.trace.dense_flops:.0%} of the dense supernet"
            )
    if not runs:
        return
    for tab, (kind, run) in zip(
        st.tabs([f"Route of the {EXTREMES[k].lower()} image" for k in runs], key="extreme_tab", on_change="rerun"),
        runs.items(),
        strict=True,
    ):
        if tab.open:  # only the open route is drawn
            with tab:
                ui.chart(gate_heatmap(run.trace.branches_frame(), drnet["threshold"]), key=f"extreme_gates_{kind}")


main()
