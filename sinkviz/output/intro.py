"""The landing page's example of a sink: one layer's attention on a one-sentence prompt.

The numbers are the engine's own (the default model, raw prompt, CPU float32), kept in
``data/intro_example.json`` so the page draws them without loading a model; a test recomputes
them. Regenerate with ``python -m sinkviz.output.intro``.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from sinkviz.numbers.metrics import layer_sinks

PROMPT = "Paris is the capital of France, and it is known for the Eiffel Tower."
DATA = "data/intro_example.json"


@dataclass(frozen=True)
class IntroExample:
    model: str                 # the model's name
    prompt: str
    tokens: tuple[str, ...]    # readable tokens
    layer: int                 # model layer shown: the deep layer (>= 2) with most attention on position 0
    attention: np.ndarray      # [L, L] that layer's attention, mean over heads (0 above the diagonal)
    first_token_share: float   # m_1 of that layer: mean over queries i >= 1 of the attention on position 0


def intro_example(analysis) -> IntroExample:
    """The example from an Analysis (``flow.analysis.Analysis``) of a short prompt (full maps)."""
    stats = analysis.stats
    if stats.bin_width != 1:
        raise ValueError("the intro example needs an unpooled map")
    mass = layer_sinks(stats, 1).sink_mass
    row = int(np.argmax(np.where(np.arange(len(mass)) >= 2, mass, -1)))
    return IntroExample(analysis.model.label.split(" (")[0], analysis.prompt, tuple(analysis.tokens.shown),
                        int(stats.layer_ids[row]), stats.maps[row].mean(axis=0), float(mass[row]))


def load_intro_example() -> IntroExample:
    data = json.loads(resources.files("sinkviz").joinpath(DATA).read_text("utf-8"))
    return IntroExample(data["model"], data["prompt"], tuple(data["tokens"]), data["layer"],
                        np.array(data["attention"]), data["first_token_share"])


def intro_heatmap(example: IntroExample) -> go.Figure:
    """The layer's attention, query rows over key columns; cells a query cannot see left blank."""
    z = example.attention.astype(float).copy()
    z[np.triu_indices_from(z, k=1)] = np.nan
    labels = [f"{i}: {t}" for i, t in enumerate(example.tokens)]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Viridis", zmin=0, zmax=1, hoverongaps=False,
                               colorbar_title="attention", colorbar_tickformat=".0%",
                               hovertemplate="%{y} looks at %{x}: %{z:.0%}<extra></extra>"))
    fig.update_layout(title=f"Layer {example.layer}: where each token's attention goes", height=380,
                      margin=dict(t=40, l=10, r=10, b=10), xaxis_title="earlier token (key)",
                      yaxis_title="token (query)", yaxis_autorange="reversed", xaxis_tickangle=-45)
    return fig


def write_intro_example(path: Path) -> IntroExample:
    """Analyse PROMPT on the default model (raw, CPU, float32) and write the example to ``path``."""
    from sinkviz.flow.analysis import Settings, analyze
    example = intro_example(analyze(PROMPT, Settings(use_template=False, device="cpu", dtype="float32")))
    path.write_text(json.dumps({"model": example.model, "prompt": example.prompt, "tokens": example.tokens,
                                "layer": example.layer, "first_token_share": round(example.first_token_share, 4),
                                "attention": np.round(example.attention, 4).tolist()}) + "\n", encoding="utf-8")
    return example


if __name__ == "__main__":
    written = write_intro_example(Path(__file__).resolve().parent.parent / DATA)
    print(f"layer {written.layer}: {written.first_token_share:.1%} on {written.tokens[0]!r}")
