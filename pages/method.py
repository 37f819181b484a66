"""Method: every number's formula, source, and how to read the charts."""

import streamlit as st

from pages.common import through_app

through_app()
st.title("Method")
st.markdown(r"""
sinkviz runs **one forward pass** of the model on your prompt. In each layer the attention
probabilities are computed block by block and reduced to the statistics below, so the full
$L \times L$ attention of every layer is never stored. On a GPU the layer's output is SDPA's own
(the model's output is unchanged bit for bit); on the CPU it is computed from those same
probabilities, as transformers' eager attention does. Every statistic is tested against
transformers' eager `output_attentions` in float64.

Notation: layer $l$, head $h$, query position $i$, key position $j$, attention
$a_{l,h,i,j}$ (each row sums to 1; causal models see only $j \le i$), $L$ tokens.

### Sink mass (first $N$ tokens)
$$m_N[l,h] = \frac{1}{L-N}\sum_{i \ge N}\ \sum_{j<N} a_{l,h,i,j}$$
The share of attention that queries *after* the first $N$ tokens give to the first $N$.
The layer value is the mean over heads. $N$ = 3 by default (a common choice), 5 a common
monitoring setting; choose 1–8.

### Uniform baseline and ratio
If every query spread its attention evenly over the keys it sees:
$b_N = \frac{1}{L-N}\sum_{i \ge N} \frac{N}{i+1}$ (bidirectional models: $N/L$).
**Ratio to uniform** $= m_N / b_N$; layers beyond the first two above **5×** are flagged.
The ratio can never exceed $1/b_N$: at 30 tokens with $N=3$ that is 4.2×, so the flag only
becomes meaningful on longer prompts. In a layer with a sliding window of $W$ tokens query $i$
sees the $\min(i+1, W)$ keys $i-W+1..i$, so that layer's baseline counts only those:
$b_N = \frac{1}{L-N}\sum_{i \ge N} \frac{\max(0,\, N - \max(0,\, i-W+1))}{\min(i+1,\, W)}$
(the bars then mark each layer's own baseline).

### Severity
Fixed thresholds on sink mass in layers beyond the first two: **warning ≥ 35 %**,
**critical ≥ 50 %**. Both are settings; the bars show them as dashed lines.

### Sink rate (Gu et al., ICLR 2025)
$\alpha_0[l,h] = \frac{1}{L}\sum_{i \ge 0} a_{l,h,i,0}$; sink rate $= 100 \times$ the share of
$(l,h)$ pairs with $\alpha_0 > \varepsilon$ (strict), $\varepsilon = 0.3$ here and in the paper
(others use 0.8, so the page always shows $\varepsilon$). Published values use 64 tokens, eager
fp32: GPT2-XL 77.0, Mistral-7B 97.5, Llama-2-7B 92.5, Llama-3-8B 99.0. "First token" is a BOS
for tokenizers that add one, a template marker with the chat template, else the first word.

### Received attention, entropy, maps
- **Received** by key $j$: $\frac{1}{L-j}\sum_{i \ge j} a_{l,h,i,j}$ — which tokens are sinks
  (not always position 0).
- **Top sink** of a layer: the key with the most attention from the queries that see it,
  $\frac{1}{s_j}\sum_{i \ge j} a_{l,h,i,j}$ (head mean) with $s_j = \min(L-j, W)$ of them, among
  the keys seen by at least half as many queries as the best-seen key (in a causal layer the
  first half of the prompt): the last key's value would be the last query's attention to itself.
- **Entropy** of a query's row: $-\sum_j a \ln a$ in nats, averaged over queries. Uniform
  attention over $i+1$ keys has $\ln(i+1)$ ($\ln \min(i+1, W)$ with a sliding window).
- **Heatmaps**: the full map up to the map size (128 tokens by default); above it, bins of
  $\lceil L/128 \rceil$ tokens holding the mean over the bin's queries of the mass on the bin's
  keys (rows still sum to 1). The title says when a map is pooled. Blank cells above the diagonal
  are keys a causal query cannot see. *Hide position 0* blanks the first column so the rest of
  the map gets the colour range; the log scale does the same for small values. An audit keeps
  each layer's map as the mean over heads only (every other number whole): single heads are most
  of an analysis's bytes, ~36 MB a 1,000-token prompt on an 8B model. Its rows open in Analyze
  with the head-mean heatmaps; *Capture every head* runs that prompt again to show single heads.

### Learned sink (gpt-oss and kin)
Some models add one more logit per head, $s_{l,h}$ (gpt-oss's `sinks`; some models make it per
query), to every row's softmax: a column no token owns. Row $i$ then gives it
$\sigma_i = e^{s - \mathrm{LSE}_i}$, where $\mathrm{LSE}_i$ runs over the visible keys *and*
$s$, and its tokens share the remaining $1 - \sigma_i$. **Learned sink** $= \frac{1}{L}\sum_i \sigma_i$,
per layer and head, shown beside the first-$N$ mass (green bars), as the last column of the
heatmap (each map row plus that column sums to 1), in the CSV and the CLI's JSON. Every other
number keeps these same probabilities (not renormalised over the tokens); the entropy includes
the sink's $-\sigma \ln \sigma$.

### Segments: which part of the sequence receives the attention
A sequence has parts: the chat **template**'s own tokens (`<|im_start|>`, role names, and any
special token the tokenizer adds, such as a BOS), the **system turn** (SmolLM2's template adds a
default one), the **user turn**, and, inside your text, **blocks** you mark. Parts are found from
the tokenizer's character offsets, not guessed: the template is rendered once with placeholders to
learn where each turn's content sits. A token belongs to the part holding most of its characters.
Block rules (the Segments tab names the one in use): *blank lines* end a block; *`---` lines* (three
or more `-`, `=` or `*`) end a block; *headings* (a line starting with `#`) start one; *auto* takes
`---` lines if your text has any, else blank lines; *halves* and *thirds* cut your text's tokens
into equal runs (how much attention reaches the later half of the context, or content in the
middle). A blank line or marker line that ends a block belongs to it.

The **share** of a part $S$:
$$\mathrm{share}[l,h,S] = \frac{1}{L}\sum_{i}\ \sum_{j \in S,\, j \le i} a_{l,h,i,j}
 = \frac{1}{L}\sum_{j \in S} C_{l,h,j},\qquad C_{l,h,j} = (L-j)\,\mathrm{received}_{l,h,j}$$
the mean over every query of the attention it gives to the part. It is exact from the received
attention the capture keeps (its column sums). All parts, plus the learned sink where the model
has one, sum to 100 % in every layer and head. It is shown against the part's **uniform share**,
$\frac{1}{L}\sum_i |S \cap \text{keys } i \text{ sees}| / |\text{keys } i \text{ sees}|$: what the
part would get if every query spread its attention evenly (sliding windows respected).

### Your text's opening
With a template, position 0 is the template's, so the sink mass above measures the template, not
you. The **opening mass** of a part whose first $N$ tokens are $P$, starting at position $u$:
$$o_N = \frac{1}{L-u}\sum_{i \ge u}\ \sum_{j \in P,\, j \le i} a_{l,h,i,j}$$
the mean, over every query that can see the opening, of the attention it gives to those $N$
tokens. Analyze, Compare and Audit show it for **your text** (and the system turn) beside the
sequence's. It counts the queries inside the opening too (the exact analogue of $m_N$, queries
$i \ge u+N$ only, needs attention rows that the capture does not keep for long prompts); so for the
sequence's own opening ($u = 0$) it is slightly above $m_N$.

### Two readings of severity
1. **Against this model** (the headline): a shipped set of 51 varied prompts (questions,
   instructions, blank-line / `---` / `###` blocks, code, German, Spanish, Japanese, Chinese, emoji,
   a policy excerpt, and 11 long texts of 214–1,750 tokens; public domain) is run once per model
   and template setting, and kept; prompts longer than the model takes are left out. A prompt's
   reading (the mean over layers $\ge 2$ of your text's opening mass, or of $m_N$) is placed among
   the $P$ calibration prompts' values (all 51 on the default model): percentile
   $= 100 \times (\#\{v < x\} + \tfrac12\#\{v = x\}) / P$.
   Between the 5th and 95th percentile it is *typical for this model*; outside, *unusual*. Each
   layer also gets its percentile among the same layer's values ("layer 24: 88 %, 25th
   percentile of this model's layer 24"). Trained models put most attention on the first tokens in
   most layers, so a fixed bar fires on nearly every prompt; the percentile tells prompts apart.
   The calibration prompts are short (31–110 tokens on SmolLM2 with its template); attention on the
   first tokens changes with length (Sweep page), so for a prompt outside the calibration's lengths
   the headline says to read its percentiles with care.
2. **Fixed thresholds** (warning 35 %, critical 50 % of $m_N$ in layers beyond the
   first two) stay as the second reading, as before.

"Mean over layers" is the same everywhere: the mean over layers $\ge 2$, the layers the fixed
thresholds judge and Analyze's strongest layer is chosen from.

### Tokens as text
Byte-level tokenizers split characters such as こ or 🎉 into tokens that are not text on their
own. Each token is shown as the text it covers: spaces, newlines and tabs as `␣`, `↵`, `⇥`; a token
that is a fragment of a character shows that character followed by its own bytes, e.g.
`こ⟨0xE3 0x81⟩` and `こ⟨0x93⟩`.

### Soft caps (Gemma 2)
Logits pass through $c \tanh(z / c)$ before the softmax; sinkviz applies the cap block by block,
so both the model's output and the statistics use the capped logits.

### Position-0 inspector
The first five tokens: id, string, whether special (BOS, template marker), the attention each
receives per layer and head, and the **hidden-state norm** and **value-vector norm** per layer
relative to the median token. Sink tokens typically carry "massive activations" (Sun et al.,
2024): a hidden-state norm many times the median, with a small value vector.

### How to read the charts
- **Bars** high and red in most layers beyond the first two: the model parks attention on
  the first tokens. That is normal for trained LLMs (a "no-op" for heads with nothing to do),
  not a bug; it matters when the sink token is content you care about, or when it moves.
- **Compare** shows whether a different opening line moves the sink (e.g. a role line before
  the instruction),
  ranked by the chosen reading, with each variant's difference from A in points and as a ratio.
- **Segments**: a part whose attention share is far above its uniform share is being read (or
  used as a sink); far below, it is being skipped (the later half of a long context, or
  critical content in the middle).
- Attention weights show where probability mass goes, not the causal story of the output.
""")
