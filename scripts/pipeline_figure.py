"""Draw docs/img/pipeline.png, the README's picture of a study's stages (rerun when the stages change)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

BOXES = {  # name: (x, y, text, colour)
    "cohort": (0.0, 1.0, "private cohort\n3 hospitals\nmembers | held-out", "#f4cccc"),
    "external": (0.0, 0.0, "external hospital\n(another camera)", "#eeeeee"),
    "synth": (1.0, 1.6, "Med-AIGC\nstatistics → generator\n→ synthetic corpus", "#d9ead3"),
    "pre_s": (2.0, 1.6, "pretrain\nsynthetic-data model", "#d9ead3"),
    "pre_r": (2.0, 0.6, "pretrain\nreal-data model", "#f4cccc"),
    "eval": (3.0, 0.0, "evaluate\nzero-shot, linear probe", "#cfe2f3"),
    "fed": (3.0, 1.1, "federate (Flower)\nDP-SGD per hospital\nnode policy + ledger", "#fff2cc"),
    "audit": (4.0, 1.1, "audit\nMIA, ε lower bound, copying,\ndéjà-vu, exposure", "#ead1dc"),
    "report": (5.0, 0.6, "report\nHTML · PDF · JSON\nheadline table", "#d0e0e3"),
}
ARROWS = [("cohort", "synth"), ("cohort", "pre_r"), ("synth", "pre_s"), ("pre_s", "fed"), ("pre_r", "fed"),
          ("pre_s", "eval"), ("pre_r", "eval"), ("external", "eval"), ("fed", "audit"), ("cohort", "fed"),
          ("audit", "report"), ("eval", "report")]
W, H = 0.98, 0.62
STEP = 1.2  # horizontal distance between stages


OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "pipeline.png"


def main(out: Path = OUT) -> None:
    fig, ax = plt.subplots(figsize=(11, 3.6))
    boxes = {k: (x * STEP, y, t, c) for k, (x, y, t, c) in BOXES.items()}
    for x, y, text, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.03", fc=colour, ec="#555555"))
        ax.text(x + W / 2, y + H / 2, text, ha="center", va="center", fontsize=7.5)
    for a, b in ARROWS:
        xa, ya = boxes[a][:2]
        xb, yb = boxes[b][:2]
        ax.annotate("", xy=(xb, yb + H / 2), xytext=(xa + W, ya + H / 2),
                    arrowprops={"arrowstyle": "->", "color": "#444444", "lw": 1.0,
                                "connectionstyle": "arc3,rad=0.05"})
    ax.set_xlim(-0.1, 5 * STEP + W + 0.1)
    ax.set_ylim(-0.15, 2.35)
    ax.axis("off")
    ax.set_title("fedclip experiment run: one study, seven stages, one run dir", fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()
