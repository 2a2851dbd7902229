#!/usr/bin/env python3
"""Draws the figures of docs/learn/ into docs/learn/figures/*.svg.

    pip install matplotlib      # once; the checks (scripts/check-docs) never need it
    python3 docs/learn/make_figures.py

The SVGs are committed, so readers and CI need neither matplotlib nor this script. Every
figure is computed, not drawn by hand: the visibility pictures run the rule of
src/common/mask.h (VisibilityMask, ported below), the fragment picture the m16n8k16 layout,
the swizzle picture CuTe's Swizzle<3, 3, 3>. Output is deterministic (fixed hash salt, no date),
so re-running it changes no file unless the drawing code changed.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parent / "figures"

plt.rcParams.update({
    "svg.fonttype": "none",       # text stays text: small, searchable files
    "svg.hashsalt": "flashattn",  # stable element ids
    "font.family": "DejaVu Sans",
    "font.size": 9,
})

VISIBLE = "#4c78a8"
MASKED = "#f2cf5b"
FULL = "#59a14f"
SKIPPED = "#e8e8e8"
ACCENT = "#e15759"
GREY = "#9d9d9d"


def save(fig, name: str) -> None:
    OUT.mkdir(exist_ok=True)
    fig.savefig(OUT / name, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    print(f"wrote {OUT / name}")


# ------------------------------------------------------------- the rule of mask.h, ported --
class Mask:
    """VisibilityMask of src/common/mask.h: key j visible to query i iff
    0 <= j < s_k and i + s_k - s_q - left <= j <= i + s_k - s_q + right."""

    def __init__(self, s_q, s_k, causal=False, left=-1, right=-1):
        self.s_q, self.s_k, self.left = s_q, s_k, left
        self.right = 0 if causal else right

    def off(self):
        return self.s_k - self.s_q

    def col_begin(self, i):
        return 0 if self.left < 0 else max(i + self.off() - self.left, 0)

    def col_end(self, i):
        if self.right < 0:
            return self.s_k
        return max(min(i + self.off() + self.right + 1, self.s_k), 0)

    def visible(self, i, j):
        return self.col_begin(i) <= j < self.col_end(i)

    def key_range(self, m0, m1):
        return self.col_begin(m0), self.col_end(m1 - 1)

    def tile_fully_visible(self, m0, m1, n0, n1):
        return n0 >= self.col_begin(m1 - 1) and n1 <= self.col_end(m0) and m1 <= self.s_q


def draw_mask(ax, mask, title):
    for i in range(mask.s_q):
        for j in range(mask.s_k):
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=VISIBLE if mask.visible(i, j) else "white",
                                   edgecolor="#cccccc", linewidth=0.5))
    # The diagonal j = i + s_k - s_q: where causal attention ends for row i.
    ax.plot([mask.off(), mask.off() + mask.s_q], [0, mask.s_q], color=ACCENT, linewidth=1.2)
    ax.set_xlim(0, mask.s_k)
    ax.set_ylim(mask.s_q, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("keys j", fontsize=8)
    ax.set_ylabel("queries i", fontsize=8)
    ax.set_title(title, fontsize=8.5)


def fig_visibility():
    cases = [
        (Mask(8, 8, causal=True), "causal, s_q = s_k = 8"),
        (Mask(5, 11, causal=True), "causal, s_q = 5 < s_k = 11\n(bottom-right: the last row sees all)"),
        (Mask(11, 5, causal=True), "causal, s_q = 11 > s_k = 5\n(first 6 rows see nothing)"),
        (Mask(10, 10, left=3, right=0), "window (3, 0): causal with\nat most 4 keys per row"),
        (Mask(10, 10, left=2, right=2), "window (2, 2): local band"),
    ]
    fig, axes = plt.subplots(1, len(cases), figsize=(13, 3.3))
    for ax, (m, title) in zip(axes, cases):
        draw_mask(ax, m, title)
    save(fig, "visibility.svg")


def draw_tiles(ax, mask, bm, bn, title):
    """Tile classes as the forward kernel sees them for query block rows [m0, m0 + bm)."""
    for m0 in range(0, mask.s_q, bm):
        m1 = min(m0 + bm, mask.s_q)
        lo, hi = mask.key_range(m0, m1)
        for n0 in range(0, mask.s_k, bn):
            n1 = min(n0 + bn, mask.s_k)
            inside = hi > lo and n0 < hi and n1 > lo
            if not inside:
                color = SKIPPED
            elif mask.tile_fully_visible(m0, m1, n0, n1):
                color = FULL
            else:
                color = MASKED
            ax.add_patch(Rectangle((n0, m0), n1 - n0, m1 - m0, facecolor=color,
                                   edgecolor="white", linewidth=1.5))
    ys = [0, mask.s_q]
    ax.plot([mask.off(), mask.off() + mask.s_q], ys, color=ACCENT, linewidth=1.0)
    if mask.left >= 0:
        ax.plot([mask.off() - mask.left, mask.off() - mask.left + mask.s_q], ys, color=ACCENT,
                linewidth=1.0, linestyle="--")
    ax.set_xlim(0, mask.s_k)
    ax.set_ylim(mask.s_q, 0)
    ax.set_aspect("equal")
    ax.set_xticks(range(0, mask.s_k + 1, 2 * bn))
    ax.set_yticks(range(0, mask.s_q + 1, bm))
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8.5)


def fig_tiles():
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    draw_tiles(axes[0], Mask(512, 512, causal=True), 128, 64,
               "causal, s = 512, 128 x 64 tiles")
    draw_tiles(axes[1], Mask(384, 640, causal=True), 128, 64,
               "causal, s_q = 384, s_k = 640")
    draw_tiles(axes[2], Mask(512, 512, left=256, right=0), 128, 64,
               "window (256, 0), s = 512")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in (FULL, MASKED, SKIPPED)]
    fig.legend(handles, ["fully visible: the unmasked loop (no mask code)",
                         "masked loop: per-element VisibilityMask",
                         "never loaded (outside key_range)"],
               loc="lower center", ncol=3, frameon=False)
    fig.suptitle("What one CTA (a row of tiles) does with each key block, "
                 "VisibilityMask::key_range / tile_fully_visible", fontsize=9)
    fig.subplots_adjust(bottom=0.14)
    save(fig, "tile_classes.svg")


# ---------------------------------------------------------------------------- GQA heads --
def fig_gqa():
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.6))
    h = 8
    for ax, (hk, name) in zip(axes, [(8, "MHA: h_k = h = 8"), (2, "GQA: h = 8, h_k = 2"),
                                      (1, "MQA: h = 8, h_k = 1")]):
        g = h // hk
        for i in range(h):
            ax.add_patch(Rectangle((i, 1.6), 0.8, 0.6, facecolor=VISIBLE, edgecolor="none"))
            ax.text(i + 0.4, 1.9, f"q{i}", ha="center", va="center", color="white", fontsize=7)
        for k in range(hk):
            x = (k + 0.5) * h / hk - 0.5
            ax.add_patch(Rectangle((x, 0), 0.8, 0.6, facecolor=ACCENT, edgecolor="none"))
            ax.text(x + 0.4, 0.3, f"kv{k}", ha="center", va="center", color="white", fontsize=7)
        for i in range(h):
            k = i // g
            x = (k + 0.5) * h / hk - 0.1
            ax.plot([i + 0.4, x], [1.6, 0.6], color=GREY, linewidth=0.8)
        ax.set_xlim(-0.5, h + 0.2)
        ax.set_ylim(-0.2, 2.4)
        ax.axis("off")
        ax.set_title(f"{name}   (kv head = i / (h / h_k))", fontsize=8.5)
    save(fig, "gqa.svg")


# ------------------------------------------------------------------- online softmax ---
def fig_online_softmax():
    import math
    s = [2.0, 1.0, 0.5, 3.0, -1.0, 2.5]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    colors = ["#4c78a8", "#4c78a8", "#f28e2b", "#f28e2b", "#59a14f", "#59a14f"]
    ax.bar(range(6), s, color=colors, width=0.6)
    m = -math.inf
    for b in range(3):
        m = max(m, max(s[2 * b:2 * b + 2]))
        ax.plot([2 * b - 0.4, 2 * b + 1.4], [m, m], color=ACCENT, linewidth=1.5)
        ax.text(2 * b + 0.5, m + 0.15, f"m after block {b + 1} = {m:g}", ha="center", fontsize=7.5,
                color=ACCENT)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(6))
    ax.set_xticklabels([f"s{j} = {v:g}" for j, v in enumerate(s)], fontsize=7.5)
    ax.set_ylim(-1.5, 4)
    ax.set_title("The worked example: one query row, 6 keys in 3 blocks of 2; "
                 "the running max only grows", fontsize=8.5)
    save(fig, "online_softmax.svg")


# ------------------------------------------------------------------ CuTe pictures ------
def fig_cute():
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
    # (a) Layout (4, 8):(8, 1) vs (4, 8):(1, 4)
    ax = axes[0]
    for panel, (stride, y0, name) in enumerate([((8, 1), 0, "(4,8):(8,1) row-major"),
                                                ((1, 4), 5.5, "(4,8):(1,4) column-major")]):
        for i in range(4):
            for j in range(8):
                ax.add_patch(Rectangle((j, y0 + i), 1, 1, facecolor="white", edgecolor=GREY))
                ax.text(j + 0.5, y0 + i + 0.5, str(i * stride[0] + j * stride[1]), ha="center",
                        va="center", fontsize=7)
        ax.text(4, y0 - 0.35, name, ha="center", fontsize=8)
    ax.set_xlim(0, 8)
    ax.set_ylim(10, -1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("Layout = shape:stride, offset of (i, j)", fontsize=8.5)

    # (b) Swizzle<3,3,3> on an 8 x 64 bf16 atom: 16-byte chunk c of row r lands in chunk c ^ r.
    ax = axes[1]
    palette = plt.get_cmap("tab10")
    for r in range(8):
        for c in range(8):
            phys = c ^ r
            ax.add_patch(Rectangle((phys, r), 1, 1, facecolor=palette(c), edgecolor="white"))
            ax.text(phys + 0.5, r + 0.5, f"c{c}", ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_xlim(0, 8)
    ax.set_ylim(8, 0)
    ax.set_aspect("equal")
    ax.set_xticks([i + 0.5 for i in range(8)])
    ax.set_xticklabels([f"{16 * i}" for i in range(8)], fontsize=7)
    ax.set_yticks([i + 0.5 for i in range(8)])
    ax.set_yticklabels([f"row {i}" for i in range(8)], fontsize=7)
    ax.set_xlabel("byte offset in the 128-byte row (= bank group)", fontsize=8)
    ax.set_title("Swizzle<3,3,3>: logical chunk c of row r stored at c XOR r;\n"
                 "one colour = one column chunk = 8 different bank groups", fontsize=8.5)

    save(fig, "cute.svg")


def fig_mma_fragment():
    """Two m16n8 fp32 accumulators side by side are the A operand of the next m16n8k16."""
    fig, ax = plt.subplots(figsize=(9, 6.2))
    palette = plt.get_cmap("tab10")
    for r in range(16):
        for c in range(16):
            tile, cc = divmod(c, 8)
            lane = (r % 8) * 4 + cc // 2
            v = (cc % 2) + (2 if r >= 8 else 0)   # accumulator value c0..c3 of this n8 tile
            a = v + 4 * tile                        # A-operand register a0..a7
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=palette(lane // 4 % 10), alpha=0.3,
                                   edgecolor="white"))
            ax.text(c + 0.5, r + 0.5, f"T{lane}\nc{v} a{a}", ha="center", va="center",
                    fontsize=5.2)
    ax.plot([8, 8], [0, 16], color=ACCENT, linewidth=1.5)
    ax.text(4, -0.4, "n8 block 0 (keys 0-7)", ha="center", fontsize=8)
    ax.text(12, -0.4, "n8 block 1 (keys 8-15)", ha="center", fontsize=8)
    ax.set_xlim(0, 16)
    ax.set_ylim(16, -1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("m16n8k16, one warp: lane T holds rows T/4 and T/4 + 8, columns 2(T%4) and +1 "
                 "of each n8 block (cK);\nthe same registers, read as a0..a7, are the A operand "
                 "(rows x 16 keys) of O += P V (acc_layout_as_a_operand).\n"
                 "One colour = one quad: the 4 lanes that share a row (quad_allreduce_max / _sum).",
                 fontsize=8.5)
    save(fig, "mma_fragment.svg")


# ------------------------------------------------------------------ forward tiling -----
def box(ax, x, y, w, h, text="", fc="white", ec="black", fs=8, color="black", lw=1.0, **kw):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=fc, edgecolor=ec, linewidth=lw, **kw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs, color=color)


def arrow(ax, x0, y0, x1, y1, color="black", style="-|>", lw=1.0):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=9,
                                 color=color, linewidth=lw))


def fig_fwd_tiling():
    fig, ax = plt.subplots(figsize=(13, 6.5))
    fs = 7.5
    # Q: 4 query blocks; this CTA's block highlighted.
    ax.text(1.0, -0.3, "Q (s_q x d), one head", ha="center", fontsize=8)
    for b in range(4):
        box(ax, 0, b * 1.5, 2, 1.5, f"m_block {b}", fc=VISIBLE if b == 2 else "#dfe7f0",
            color="white" if b == 2 else "black", fs=fs)
    ax.text(1.0, 6.3, "one CTA per query block\n(x), head (y), sequence (z);\nlast block first",
            ha="center", va="top", fontsize=fs)
    # Key blocks.
    ax.text(6.8, -2.55, "K and V of the same head (GQA: kv head), in key blocks of kBlockN",
            ha="center", fontsize=8)
    for n in range(6):
        box(ax, 3.5 + n * 1.1, -2.3, 1.1, 1.0, f"n = {n}", fc="#f6d7d7", fs=fs)
    arrow(ax, 10.0, -0.95, 3.6, -0.95, color=ACCENT)
    ax.text(6.8, -0.55, "main loop: n = n_block_max - 1 down to n_block_min", ha="center",
            fontsize=fs, color=ACCENT)
    # S tile.
    ax.text(5.3, 1.2, "S = Q K[n]^T (registers)", ha="center", fontsize=8)
    for w in range(4):
        box(ax, 3.5, 1.5 + w * 0.75, 3.6, 0.75, f"warp {w}: rows {32 * w}-{32 * w + 31}",
            fc="#e4efe0", fs=fs)
    ax.text(5.3, 4.75, "128 rows x 64 keys; a row lives in one\nwarp, in the 4 lanes of a quad",
            ha="center", va="top", fontsize=fs)
    arrow(ax, 2.05, 3.75, 3.45, 3.75)
    # O accumulator.
    ax.text(9.2, 1.2, "O = acc_o (registers)", ha="center", fontsize=8)
    for w in range(4):
        box(ax, 8.3, 1.5 + w * 0.75, 1.8, 0.75, f"warp {w}", fc="#fff2cc", fs=fs)
    ax.text(9.2, 4.75, "128 x d fp32, rescaled\nper block, stored once", ha="center", va="top",
            fontsize=fs)
    arrow(ax, 7.15, 3.0, 8.25, 3.0)
    ax.text(7.7, 2.85, "softmax\nO += P V", ha="center", va="bottom", fontsize=6.5)
    # Shared memory.
    ax.text(12.0, 1.2, "shared memory", ha="center", fontsize=8)
    for k, (name, fc) in enumerate([("sQ", "#dfe7f0"), ("sK: 1 or 2 stages", "#f6d7d7"),
                                    ("sV: 1 or 2 stages", "#f6d7d7")]):
        box(ax, 11.0, 1.5 + k * 1.0, 2.0, 0.9, name, fc=fc, fs=fs)
    ax.text(12.0, 4.75, "cp.async writes it,\nldmatrix reads it", ha="center", va="top",
            fontsize=fs)
    ax.set_xlim(-0.3, 13.4)
    ax.set_ylim(7.0, -2.9)
    ax.set_aspect("equal")
    ax.axis("off")
    save(fig, "fwd_tiling.svg")


def fig_fwd_pipeline():
    fig, axes = plt.subplots(2, 1, figsize=(12, 4.6))
    copy_c, mma_c, soft_c = "#f6d7d7", "#c9daf0", "#e4efe0"

    def lane(ax, y, items):
        for (x, w, text, fc) in items:
            box(ax, x, y, w, 0.7, text, fc=fc, fs=7)

    def barrier(ax, x, label):
        ax.axvline(x, color=ACCENT, linestyle="--", linewidth=1)
        ax.text(x, 2.05, label, color=ACCENT, ha="center", fontsize=7)

    # kStages = 1 (FlashAttention-2's schedule)
    ax = axes[0]
    ax.text(-0.2, 1.35, "cp.async", ha="right", va="center", fontsize=8)
    ax.text(-0.2, 0.35, "warps", ha="right", va="center", fontsize=8)
    x = 0.0
    items_copy, items_mma = [], []
    for n in (3, 2, 1):
        barrier(ax, x, "B1")
        items_copy.append((x + 0.1, 2.6, f"V[{n}] lands", copy_c))
        items_mma.append((x + 0.1, 2.6, f"S = Q K[{n}]^T, mask", mma_c))
        x += 2.8
        barrier(ax, x, "B2")
        items_copy.append((x + 0.1, 3.0, f"K[{n - 1}] lands", copy_c))
        items_mma.append((x + 0.1, 3.0, f"softmax; O += P V[{n}]", soft_c))
        x += 3.2
    lane(ax, 1.0, items_copy)
    lane(ax, 0.0, items_mma)
    ax.set_xlim(-1.6, x + 0.2)
    ax.set_ylim(-0.2, 2.3)
    ax.axis("off")
    ax.set_title("kStages = 1: one K and one V buffer, two barriers per key block "
                 "(B1: K[n] landed, sV free; B2: V[n] landed, sK free)", fontsize=8.5)
    # kStages = 2
    ax = axes[1]
    ax.text(-0.2, 1.35, "cp.async", ha="right", va="center", fontsize=8)
    ax.text(-0.2, 0.35, "warps", ha="right", va="center", fontsize=8)
    x = 0.0
    items_copy, items_mma = [], []
    for n in (3, 2, 1):
        barrier(ax, x, "B")
        items_copy.append((x + 0.1, 5.8, f"K[{n - 1}], V[{n - 1}] land in stage {(3 - n + 1) % 2}",
                           copy_c))
        items_mma.append((x + 0.1, 2.6, f"S = Q K[{n}]^T, mask", mma_c))
        items_mma.append((x + 2.8, 3.1, f"softmax; O += P V[{n}]", soft_c))
        x += 6.0
    lane(ax, 1.0, items_copy)
    lane(ax, 0.0, items_mma)
    ax.set_xlim(-1.6, x + 0.2)
    ax.set_ylim(-0.2, 2.3)
    ax.axis("off")
    ax.set_title("kStages = 2: K and V double-buffered, one barrier per key block "
                 "(B: K[n], V[n] landed; every warp done with the other stage)", fontsize=8.5)
    save(fig, "fwd_pipeline.svg")


# --------------------------------------------------------------------- split-KV -------
def fig_split_kv():
    fig, ax = plt.subplots(figsize=(11, 3.2))
    colors = ["#4c78a8", "#f28e2b", "#59a14f"]
    ax.text(-0.2, 0.4, "visible key blocks\nof one query block", ha="right", va="center", fontsize=8)
    per = 3
    for n in range(8):
        s = n // per
        box(ax, n * 1.1, 0, 1.0, 0.8, f"n={n}", fc=colors[s], color="white", fs=7.5)
    for s in range(3):
        x = (s * per + min(per, 8 - s * per) / 2) * 1.1 - 0.05
        box(ax, x - 1.2, -2.0, 2.4, 0.8, f"split {s}: O_{s}, LSE_{s}", fc="white", ec=colors[s],
            fs=7.5)
        arrow(ax, x, -0.05, x, -1.15, color=colors[s])
        arrow(ax, x, -2.05, 4.3, -3.05, color=colors[s])
    box(ax, 2.1, -3.9, 4.4, 0.8, "combine: LSE = log sum_s exp(LSE_s)\nO = sum_s exp(LSE_s - LSE) O_s",
        fs=7.5, fc="#fff2cc")
    ax.text(9.2, -1.6, "per_split = ceil(8 / 3) = 3 blocks\n(TileSchedulerSplitSm80: the splits\n"
            "of a query block are adjacent CTAs)\n\nmerge: src/cuda/combine.cu, or inside\n"
            "a thread-block cluster on sm_90", fontsize=7.5, va="center")
    ax.set_xlim(-2.6, 12.6)
    ax.set_ylim(-4.2, 1.1)
    ax.set_aspect("equal")
    ax.axis("off")
    save(fig, "split_kv.svg")


# --------------------------------------------------------------------- backward -------
def fig_bwd():
    fig, ax = plt.subplots(figsize=(12, 4.6))
    # key blocks = CTAs (columns), query blocks (rows); causal: CTA n sees query blocks >= n.
    nb = 4
    for n in range(nb):
        box(ax, 1.5 + n * 1.6, -1.3, 1.4, 0.8, f"CTA n={n}\nK, V: smem\ndK, dV: regs",
            fc="#f6d7d7", fs=6.5)
    for m in range(nb):
        ax.text(1.3, m * 1.0 + 0.45, f"query block m={m}", ha="right", va="center", fontsize=7.5)
        for n in range(nb):
            vis = m >= n  # causal, s_q = s_k, square blocks
            fc = (MASKED if m == n else FULL) if vis else SKIPPED
            box(ax, 1.5 + n * 1.6, m * 1.0, 1.4, 0.9, "", fc=fc, ec="white")
    for n in range(nb):
        arrow(ax, 1.5 + n * 1.6 + 0.7, nb * 1.0 - 0.1, 1.5 + n * 1.6 + 0.7, n * 1.0 + 0.05,
              color=ACCENT)
    ax.text(4.7, nb * 1.0 + 0.35, "each CTA walks its query blocks from the last down "
            "(red), recomputing P from the LSE", ha="center", fontsize=7.5, color=ACCENT)
    # dq_accum tiles on the right with red.add from several CTAs.
    xq = 10.0
    for m in range(nb):
        box(ax, xq, m * 1.0, 2.2, 0.9, f"dq_accum tile m={m}\n(fp32, global)", fc="#fff2cc", fs=7)
        arrow(ax, 1.5 + (nb - 1) * 1.6 + 1.45, m * 1.0 + 0.45, xq - 0.05, m * 1.0 + 0.45,
              color=GREY, lw=0.8)
        ax.text(8.85, m * 1.0 + 0.38, f"+= from CTAs 0..{m}", ha="center", va="bottom", fontsize=6.5,
                color="#555555")
    ax.text(xq + 2.4, 1.9, "dQ_m = sum over key blocks n of dS K[n]:\n"
            "several CTAs add into the same tile\n-> red.global.add (atomics), or in\n"
            "deterministic mode in key-block order\n(dq_semaphore)", fontsize=7.5, va="center")
    ax.set_xlim(-1.2, 15.8)
    ax.set_ylim(nb + 0.7, -1.6)
    ax.set_aspect("equal")
    ax.axis("off")
    save(fig, "bwd_loop.svg")


# ----------------------------------------------------------------------- Hopper --------
def fig_hopper():
    fig, axes = plt.subplots(2, 1, figsize=(12, 4.2), gridspec_kw={"height_ratios": [1, 2.3]})
    gemm_c, soft_c, tma_c = "#c9daf0", "#e4efe0", "#f6d7d7"
    x0 = 1.8
    # (a) no overlap: one warpgroup alone.
    ax = axes[0]
    ax.text(x0 - 0.2, 0.35, "1 warpgroup", ha="right", va="center", fontsize=8)
    x = x0
    for j in range(3):
        box(ax, x, 0, 1.6, 0.7, f"GEMMs {j}", fc=gemm_c, fs=7)
        box(ax, x + 1.6, 0, 1.6, 0.7, f"softmax {j}", fc=soft_c, fs=7)
        x += 3.2
    ax.text(x + 0.2, 0.35, "tensor cores idle during\nevery softmax", va="center", fontsize=7.5)
    ax.set_xlim(-1.0, 15.5)
    ax.set_ylim(-0.2, 0.9)
    ax.axis("off")
    ax.set_title("Without overlap: the MMA units wait for the exponentials", fontsize=8.5)
    # (b) ping-pong: two consumer warpgroups alternate on the same K/V blocks; the producer loads.
    ax = axes[1]
    ax.text(x0 - 0.2, 2.35, "producer (TMA)", ha="right", va="center", fontsize=8)
    ax.text(x0 - 0.2, 1.35, "consumer WG 1", ha="right", va="center", fontsize=8)
    ax.text(x0 - 0.2, 0.35, "consumer WG 2", ha="right", va="center", fontsize=8)
    for j in range(3):
        box(ax, x0 + j * 3.2, 2.0, 3.1, 0.7, f"K/V {j + 1} -> smem stage {(j + 1) % 2}", fc=tma_c,
            fs=6.5)
    x = x0
    for j in range(3):
        box(ax, x, 1.0, 1.6, 0.7, f"GEMMs {j}", fc=gemm_c, fs=7)
        box(ax, x + 1.6, 1.0, 1.6, 0.7, f"softmax {j}", fc=soft_c, fs=7)
        box(ax, x + 1.6, 0.0, 1.6, 0.7, f"GEMMs {j}", fc=gemm_c, fs=7)
        box(ax, x + 3.2, 0.0, 1.6, 0.7, f"softmax {j}", fc=soft_c, fs=7)
        x += 3.2
    ax.text(x + 1.9, 1.2, "each consumer owns 64 query rows\nof the tile; named barriers pass\n"
            "the tensor cores back and forth:\none computes while the other\nexponentiates",
            va="center", fontsize=7.5)
    ax.set_xlim(-1.0, 15.5)
    ax.set_ylim(-0.2, 2.9)
    ax.axis("off")
    ax.set_title("Warp specialization + ping-pong (FlashAttention-3 on H100)", fontsize=8.5)
    save(fig, "hopper_pingpong.svg")


def main():
    fig_visibility()
    fig_tiles()
    fig_gqa()
    fig_online_softmax()
    fig_cute()
    fig_mma_fragment()
    fig_fwd_tiling()
    fig_fwd_pipeline()
    fig_split_kv()
    fig_bwd()
    fig_hopper()


if __name__ == "__main__":
    main()
