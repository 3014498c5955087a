"""The build report: `report.md` with PNG plots, written into the bundle.

In:  a finished build's results and its metadata.
Out: report.md (dense vs shipped accuracy/params/MACs/size, predicted latency vs budget, per-layer
     channels kept, the search's candidates, parity, per-layer int8 error, robustness, stage times)
     and candidates.png, channels.png, robustness.png, training.png.
Run: the bundle stage of `make build`.
"""
from __future__ import annotations

from pathlib import Path


def _plots(b, meta, d: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = b.results
    made = []
    # candidates: val accuracy after pruning vs predicted latency, with the budget
    c = r["search"]["candidates"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([x["predicted_p90_ms"] for x in c], [x["val_acc_pruned"] for x in c],
               c=["tab:green" if x["fits_latency"] and x["fits_size"] else "tab:red" for x in c])
    for x in c:
        ax.annotate(f"s={x['sparsity']:.2f}", (x["predicted_p90_ms"], x["val_acc_pruned"]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
    ch = r["search"]["chosen"]
    ax.scatter([ch["predicted_p90_ms"]], [ch["val_acc_pruned"]], s=160, facecolors="none", edgecolors="k", label="chosen")
    ax.axvline(meta["latency_ms"]["budget"], color="k", ls="--", lw=1, label="budget")
    ax.set_xlabel(f"predicted p90 on {b.target.name} (ms)")
    ax.set_ylabel("val top-1 right after pruning (%)")
    ax.set_title("sparsity search candidates")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(d / "candidates.png", dpi=110)
    plt.close(fig)
    made.append("candidates.png")
    # channels kept per layer
    if "layers" in r["search"]:
        dense = {l["name"]: l["out_channels"] for l in r["search"]["dense_layers"]}
        kept = {l["name"]: l["out_channels"] for l in r["search"]["layers"]}
        names = list(dense)
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4))
        ax.bar(range(len(names)), [dense[n] for n in names], color="lightgray", label="dense")
        ax.bar(range(len(names)), [kept.get(n, 0) for n in names], color="tab:blue", label="kept")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("output channels")
        ax.legend()
        ax.set_title("channels kept per layer")
        fig.tight_layout()
        fig.savefig(d / "channels.png", dpi=110)
        plt.close(fig)
        made.append("channels.png")
    rob = r.get("robustness")
    if rob and "sparse_fp32" in rob:  # absent when the stage was skipped (--robust-n 0)
        eps = [float(e) for e in rob["sparse_fp32"]["eps"]]
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, src, key, clean in (
            ("dense fp32 (PGD white-box)", rob["dense_fp32"], "pgd", rob["dense_fp32"]["clean"]["torch"]),
            ("sparse fp32 (PGD white-box)", rob["sparse_fp32"], "pgd", rob["sparse_fp32"]["clean"]["torch"]),
            ("shipped int8 .tflite (PGD transfer)", rob["sparse_fp32"], "tflite_int8_pgd_transfer",
             rob["sparse_fp32"]["clean"].get("tflite_int8")),
        ):
            ax.plot([0] + eps, [clean] + [src["eps"][f"{e:g}"][key] for e in eps], marker="o", label=label)
        ax.set_xlabel("epsilon (/255, L-inf)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"robustness on {rob['n']} test images")
        ax.legend()
        fig.tight_layout()
        fig.savefig(d / "robustness.png", dpi=110)
        plt.close(fig)
        made.append("robustness.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    th = r["train"]["history"]
    fh = r["finetune"]["history"]
    rh = r.get("reference", {}).get("history", [])
    kd = " (KD)" if b.cfg.finetune.kd_alpha > 0 else ""
    teacher = r.get("reference", {}).get("kind") == "teacher"
    ax.plot([h["epoch"] for h in th], [h["val_acc"] for h in th], marker="o",
            label="dense (sparsity objective): reference and teacher" if teacher else "dense warm-up (sparsity objective)")
    ax.plot([len(th) + h["epoch"] for h in fh], [h["val_acc"] for h in fh], marker="s", label=f"fine-tune after pruning{kd}")
    if rh and not teacher and r["finetune"]["final"]["sparsity"] > 0:  # at sparsity 0 the reference is the fine-tune itself
        ax.plot([len(th) + h["epoch"] for h in rh], [h["val_acc"] for h in rh], marker=".", linestyle="--",
                color="gray", label="dense reference (same epochs, not pruned)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(d / "training.png", dpi=110)
    plt.close(fig)
    made.append("training.png")
    return made


def write(b, meta: dict, d: Path) -> None:
    r, t = b.results, b.target
    acc = meta["accuracy"]
    plots = _plots(b, meta, d)
    ch = r["finetune"]["final"]
    L = []
    L.append(f"# edge_sparse build report: {t.name}\n")
    L.append(f"{t.device} ({t.cpu}); runtime {t.runtime}, {t.threads} threads. Dataset {b.cfg.dataset}, "
             f"model {b.cfg.model}, criterion {b.cfg.criterion}, channel multiple {t.channel_multiple}"
             f"{', QUICK build (small slice, short epochs)' if meta['build']['quick'] else ''}"
             f"{f', {n} unreadable images skipped (--skip-bad-images)' if (n := meta['build'].get('skipped_images')) else ''}.\n")
    lat = meta["latency_ms"]
    verdict = "meets" if ch["predicted_p90_ms"] <= lat["budget"] else "MISSES"
    label = "**estimate**" if lat["source"] == "estimate" else "measured"
    L.append(f"**Verdict:** predicted p90 ({label}) {ch['predicted_p90_ms']:.4f} ms {verdict} the {lat['budget']:.4g} ms budget "
             f"({lat['budget_spec']}; {ch['predicted_p90_ms'] / lat['budget']:.0%} of it); "
             f"int8 .tflite top-1 {acc['tflite_int8']:.2f}% (floor {t.accuracy_floor_pct}%), "
             f"{meta['model']['size_kb']:.1f} KiB (budget {t.model_size_budget_kb} KiB).\n")
    relaxed = [k for k, v in meta["build"]["gates_enforced"].items() if not v]
    if relaxed:
        L.append(f"**Gates reported, not enforced in this build:** {', '.join(relaxed)}"
                 f"{' (QUICK: small slice, short epochs)' if meta['build']['quick'] else ''}.\n")
    L.append("## Dense vs shipped\n")
    L.append(f"Dense reference: {meta['dense']['reference']}.\n")
    L.append("| | dense | shipped | ratio |\n|---|---|---|---|")
    L.append(f"| params | {meta['dense']['params']:,} | {meta['model']['params']:,} | ÷{meta['dense']['params'] / meta['model']['params']:.2f} |")
    L.append(f"| MACs | {meta['dense']['macs']:,} | {meta['model']['macs']:,} | ÷{meta['dense']['macs'] / meta['model']['macs']:.2f} |")
    L.append(f"| int8 .tflite size (KiB) | {meta['dense']['size_kb_int8']:.1f} | {meta['model']['size_kb']:.1f} | ÷{meta['dense']['size_kb_int8'] / meta['model']['size_kb']:.2f} |")
    L.append(f"| predicted p90 on {t.name} (ms) | {meta['latency_ms']['dense_predicted_p90']:.3f} | {ch['predicted_p90_ms']:.3f} | ÷{meta['latency_ms']['dense_predicted_p90'] / ch['predicted_p90_ms']:.2f} |")
    L.append(f"| top-1 torch fp32 (%) | {acc['torch_fp32_dense']:.2f} | {acc['torch_fp32']:.2f} | {acc['torch_fp32'] - acc['torch_fp32_dense']:+.2f} pt |")
    L.append(f"| top-1 int8 .tflite (%) | {acc['dense_tflite_int8']:.2f} | {acc['tflite_int8']:.2f} | {acc['tflite_int8'] - acc['dense_tflite_int8']:+.2f} pt |")
    L.append(f"\nSparsity: {meta['sparsity']:.2f} of prunable channels removed. Accuracy in this table: the {acc['n_eval']} "
             f"test images of `eval.npz` (the on-device slice, ~±{100 * 1.96 * (0.1 / max(1, acc['n_eval'])) ** 0.5:.1f} pt).\n")
    full = acc.get("test")
    if full:
        L.append(f"### Accuracy on the whole test split ({full['n']:,} images, 95 % Wilson intervals)\n")
        L.append("| model | top-1 (%) | 95 % interval |\n|---|---|---|")
        for k, name in (("torch_fp32_dense", "dense reference, torch fp32"), ("dense_tflite_int8", "dense reference, int8 .tflite"),
                        ("torch_fp32", "shipped, torch fp32"), ("tflite_int8", "**shipped, int8 .tflite**"),
                        ("onnx_int8", "shipped, int8 ONNX")):
            v = full[k]
            L.append(f"| {name} | {v['acc']:.2f} | {v['ci95'][0]:.2f}–{v['ci95'][1]:.2f} |")
        d8, d32 = full["shipped_int8_minus_dense_fp32"], full["shipped_fp32_minus_dense_fp32"]
        L.append(f"\nShipped int8 − dense fp32: **{d8['diff_pt']:+.2f} pt** (paired 95 % interval {d8['ci95_pt'][0]:+.2f} to "
                 f"{d8['ci95_pt'][1]:+.2f}); shipped fp32 − dense fp32: {d32['diff_pt']:+.2f} pt ({d32['ci95_pt'][0]:+.2f} to "
                 f"{d32['ci95_pt'][1]:+.2f}). int8 .tflite agrees with torch fp32 on {full['int8_agreement_pct']:.2f} % of the test images.\n")
    L.append("## Sparsity search\n")
    L.append("![candidates](candidates.png)\n")
    L.append("| method | sparsity | MACs | params | predicted p90 (ms) | est. size (KiB) | val top-1 after pruning + BN re-estimation | fits |\n|---|---|---|---|---|---|---|---|")
    chosen = r["search"]["chosen"]
    for c in r["search"]["candidates"]:
        mark = "**chosen**" if (c.get("method"), c["sparsity"]) == (chosen.get("method"), chosen["sparsity"]) else \
            ("yes" if c["fits_latency"] and c["fits_size"] else "no")
        L.append(f"| {c.get('method', 'global')} | {c['sparsity']:.2f} | {c['macs']:,} | {c['params']:,} | {c['predicted_p90_ms']:.4f} | "
                 f"{c['est_size_kb']:.1f} | {c['val_acc_pruned']:.2f} | {mark} |")
    L.append(f"\nLatency source: {label}, {lat['latency_model']}. Budget {lat['budget']:.4g} ms ({lat['budget_spec']})"
             + (f", searched under {lat['effective_budget']:.4g} ms: a {lat['margin']:.0%} margin for the prediction's error" if lat.get("margin") else "")
             + ".\n")
    prov = r["search"]["latency"]["provenance"]
    if lat["source"] == "estimate" and prov.get("held_out"):
        h = prov["held_out"]
        L.append(f"The estimate: {prov['method']}. Shape: {prov['shape_from']} ({prov['networks']} networks, "
                 f"{prov['folds']}-fold held-out Spearman {h['spearman']:.3f}, median |error| {h['median_abs_err']:.1%}, "
                 f"{h['within_15']:.0%} within ±15 %, p90 |error| {h['p90_abs_err']:.1%} = the margin). Scale: {prov['anchor']}: "
                 f"{prov.get('anchor_source_text', '').strip()} Assumptions: {' '.join(a + '.' for a in prov.get('assumptions', []))}\n")
    elif lat["source"] == "estimate":
        L.append(f"The estimate's sources: {prov.get('source_text', '').strip()}\n")
    w = r["search"]["latency"].get("weights")
    if w:
        L.append(f"Weights from memory: {w['how']}: {w['dense_measured_p50_ms']:.4f} ms against the table's "
                 f"{w['dense_table_p50_ms']:.4f} ms, so every op also costs {w['ms_per_weight_mb'] * 1000:.1f} us per MB of "
                 f"its weights (the dense model reads {w['dense_weight_mb']:.2f} MB; each probe ran its op's weights "
                 f"in cache).\n")
    if "channels.png" in plots:
        L.append("## Channels kept per layer\n\n![channels](channels.png)\n")
        kept = {l["name"]: l for l in r["search"]["layers"]}
        ms = {l["name"]: l["ms"] for l in r["search"].get("latency_layers", [])}
        L.append(f"| layer | dense in→out | kept in→out | predicted ms ({label}, p50 share) |\n|---|---|---|---|")
        for l in r["search"]["dense_layers"]:
            k = kept.get(l["name"])
            kept_txt = f"{k['in_channels']}→{k['out_channels']}" if k else "removed"
            L.append(f"| {l['name']} | {l['in_channels']}→{l['out_channels']} | {kept_txt} | "
                     f"{ms[l['name']]:.4f} |" if l["name"] in ms else f"| {l['name']} | {l['in_channels']}→{l['out_channels']} | {kept_txt} | – |")
        rest = [x for x in r["search"].get("latency_layers", []) if x["name"] not in kept]
        if rest:
            L.append("\nOther ops (predicted ms): " + ", ".join(f"{x['op']} {x['name']} {x['ms']:.4f}" for x in rest) + "\n")
        L.append(f"\nShrink check: max |masked dense − shrunk| = {r['search']['shrink_max_abs_diff']:.2e}\n")
    for u in r["search"].get("unprunable", []):
        L.append(f"Kept unpruned: {', '.join(u['layers'])} — {u['why']}.\n")
    if r["search"].get("dropped_blocks"):
        L.append(f"Blocks dropped whole (the narrowest widths alone missed the budget): "
                 f"{', '.join(r['search']['dropped_blocks'])}.\n")
    for n in r["train"].get("weights_notes", []):
        L.append(f"Weights: {n}.\n")
    L.append("## Parity (against torch fp32 of the shipped model)\n")
    L.append("| artifact | kind | top-1 (%) | agreement (%) | max abs diff (logits) | accuracy loss (pt) |\n|---|---|---|---|---|---|")
    for name, p in r["verify"]["parity"].items():
        L.append(f"| {name} | {p['kind']} | {p['accuracy']:.2f} | {p['agreement']:.2f} | {p['max_abs_diff']:.4f} | {p['accuracy_loss']:+.2f} |")
    L.append("\nWorst layers under int8 (ONNX QDQ vs fp32, calibration images):\n")
    L.append("| tensor | op | rel. L2 error | cosine |\n|---|---|---|---|")
    for e in r["verify"]["layer_errors"][:6]:
        L.append(f"| {e['tensor']} | {e['op']} | {e['rel_l2_error']:.4f} | {e['cosine']:.5f} |")
    lint = r["export"]["tflite_lint"]
    L.append(f"\n.tflite ops: {', '.join(f'{k}×{v}' for k, v in sorted(lint['ops'].items()))}; "
             f"I/O {lint['input_dtype']}/{lint['output_dtype']}; no custom/Flex ops; conv channels equal the shrunk torch model's.\n")
    rob = r.get("robustness")
    if rob and "sparse_fp32" in rob:  # absent when the stage was skipped (--robust-n 0)
        L.append(f"## Robustness ({rob['n']} test images, L∞, PGD-{rob['steps']} with random start)\n")
        L.append("![robustness](robustness.png)\n")
        L.append("| eps (/255) | dense fp32 FGSM | dense fp32 PGD | sparse fp32 FGSM | sparse fp32 PGD | int8 .tflite (PGD transfer) | int8 .onnx (PGD transfer) |\n|---|---|---|---|---|---|---|")
        L.append(f"| 0 | {rob['dense_fp32']['clean']['torch']:.1f} | {rob['dense_fp32']['clean']['torch']:.1f} | {rob['sparse_fp32']['clean']['torch']:.1f} | {rob['sparse_fp32']['clean']['torch']:.1f} | {rob['sparse_fp32']['clean']['tflite_int8']:.1f} | {rob['sparse_fp32']['clean']['onnx_int8']:.1f} |")
        for e in rob["sparse_fp32"]["eps"]:
            dd, ss = rob["dense_fp32"]["eps"][e], rob["sparse_fp32"]["eps"][e]
            L.append(f"| {e} | {dd['fgsm']:.1f} | {dd['pgd']:.1f} | {ss['fgsm']:.1f} | {ss['pgd']:.1f} | {ss['tflite_int8_pgd_transfer']:.1f} | {ss['onnx_int8_pgd_transfer']:.1f} |")
        L.append("")
    tr, ft = b.cfg.train, b.cfg.finetune
    L.append("## Training\n")
    L.append(f"Dense training: {len(b.results['train']['history'])} epochs ({tr.schedule}, lr {tr.lr:g}, augment {tr.augment}, "
             f"{tr.sparsity_reg} λ {tr.sparsity_lambda:g}); then pruned to {ch['sparsity']:.2f} and fine-tuned "
             f"{len(b.results['finetune']['history'])} epochs ({ft.schedule}, lr {ft.lr:g}, augment {ft.augment})"
             f"{f', distillation α {ft.kd_alpha:g} T {ft.kd_temperature:g}' if ft.kd_alpha > 0 else ', no distillation'}"
             f"{', PGD adversarial training' if ft.adv_train != 'none' else ''}. Dense reference: {meta['dense']['epochs']} epochs.\n")
    L.append("![training](training.png)\n")
    L.append("## Stage wall times (s)\n")
    L.append("| stage | this run | when built |\n|---|---|---|")
    built = meta["build"]["stage_seconds_when_built"]
    for k, v in meta["build"]["stage_seconds"].items():
        L.append(f"| {k} | {v:.1f} | {built.get(k, v):.1f} |")
    ex = r["export"]["seconds"]
    dense_from = r["export"].get("dense_export")  # its own cache entry, shared by builds of the same dense model
    L.append("\nExport breakdown: " + ", ".join(f"{k} {v:.1f}s" for k, v in ex.items())
             + (f" (dense reference: {dense_from})" if dense_from else "") + "\n")
    L.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f". Commit {meta['build']['git_commit']}.\n")
    (d / "report.md").write_text("\n".join(L) + "\n")
