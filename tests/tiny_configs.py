"""A tiny random config of any model type transformers ships, built from the config class's
own defaults: widths, layers, heads, experts and vocabulary shrunk, nested configs shrunk
alike, per-layer lists cut to the layers kept (one of each layer kind, so hybrids keep an
attention layer and a Mamba / linear-attention layer). ``OVERRIDES`` fixes the few types
whose defaults tie sizes together in ways the generic rules miss."""

import dataclasses

VOCAB = 128          # the word-level test tokenizer uses ids 0..119; specials beyond stay unused
HIDDEN, HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 16, 128, 2

SIZES = {  # field -> tiny value (only fields whose default is an int are touched)
    **dict.fromkeys(["hidden_size", "n_embd", "d_model", "dim", "emb_dim", "embed_dim", "embedding_size",
                     "word_embed_proj_dim", "lru_width", "input_embedding_size",
                     "output_embedding_size", "hidden_size_per_layer_input",
                     "adapter_in_dim", "adapter_out_dim", "adapter_input_size"], HIDDEN),
    **dict.fromkeys(["intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim",
                     "d_ff", "d_inner", "dim_ff", "dff", "feed_forward_size", "hidden_dim", "ffn_hidden_size",
                     "intermediate_size_mlp", "dense_intermediate_size", "prefix_dense_intermediate_size",
                     "expert_ffn_hidden_size"], FFN),
    **dict.fromkeys(["moe_intermediate_size", "shared_expert_intermediate_size", "shared_intermediate_size",
                     "shared_experts_intermediate_size", "moe_shared_expert_intermediate_size"], 32),
    **dict.fromkeys(["num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers",
                     "decoder_layers", "num_decoder_layers", "num_encoder_layers"], LAYERS),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "attention_heads", "num_encoder_attention_heads",
                     "num_decoder_attention_heads", "swa_num_attention_heads"], HEADS),
    **dict.fromkeys(["head_dim", "d_head", "dim_head", "attention_head_size", "kv_channels", "swa_head_dim",
                     "attention_head_dim", "v_head_dim", "qk_head_dim", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_head_dim", "index_head_dim", "indexer_head_dim",
                     "mamba_head_dim", "mamba_d_head"], HEAD_DIM),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "top_k_experts", "moe_k"], 2),
    **dict.fromkeys(["n_group", "topk_group", "n_shared_experts", "num_shared_experts",
                     "moe_num_shared_experts", "first_k_dense_replace", "num_dense_layers"], 1),
    **dict.fromkeys(["q_lora_rank", "kv_lora_rank", "o_lora_rank"], 32),
    **dict.fromkeys(["qk_rope_head_dim", "qk_nope_head_dim"], 8),
    **dict.fromkeys(["index_n_heads", "indexer_n_heads", "linear_num_heads", "linear_num_value_heads"], HEADS),
    "linear_num_key_heads": 2, "swa_num_key_value_heads": 2, "index_topk": 8,
    "indexer_budget": 16, "indexer_compress_ratio": 4,     # sparse attention keeps 16 of 40 keys
    "indexer_kv_heads": 1,
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_target_positions",
                     "max_source_positions", "max_seq_len", "context_length"], 512),
    **dict.fromkeys(["sliding_window", "sliding_window_size", "attention_window_size", "window_size",
                     "local_attention_window_len"], 16),
    **dict.fromkeys(["vocab_size", "decoder_vocab_size", "output_vocab_size", "unpadded_vocab_size"], VOCAB),
    **dict.fromkeys(["state_size", "mamba_d_state", "ssm_state_size"], 16),
    **dict.fromkeys(["mamba_n_heads", "mamba_num_heads", "n_mamba_heads"], 8),
    "vocab_size_per_layer_input": VOCAB, "type_vocab_size": 2, "laurel_rank": 8, "rotary_dim": 8,
}
# fields whose None default real checkpoints always fill (the model cannot be built without them)
FILL_NONE = {"head_dim", "vocab_size", "num_experts_per_tok", "n_routed_experts", "moe_intermediate_size",
             "n_shared_experts", "indexer_budget", "indexer_compress_ratio", "indexer_n_heads",
             "indexer_kv_heads", "indexer_head_dim"}
TOKEN_IDS = {"pad_token_id": 3, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
             "sep_token_id": 2, "cls_token_id": 1, "mask_token_id": 3, "pad_index": 3, "bos_index": 1,
             "eos_index": 2, "unk_index": 0, "mask_index": 3, "forced_eos_token_id": 2}

OVERRIDES: dict[str, dict] = {  # model type -> extra keyword values (see the module docstring)
    "falcon_h1": {"mamba_d_ssm": 128},                      # mamba heads x head dim = d_ssm
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 16},
    "mamba2": {"num_heads": 8},                             # heads x head dim = expand x hidden
    "zaya": {"num_experts_per_tok": 1},                     # the only value ZAYA supports
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},
    "lfm2": {"num_hidden_layers": 2, "layer_types": ["conv", "full_attention"]},   # one layer of each kind
    "lfm2_moe": {"num_hidden_layers": 2, "layer_types": ["conv", "full_attention"]},
    "dbrx": {"attn_config": {"kv_n_heads": 1, "rope_theta": 1e4, "clip_qkv": 8.0}},  # defaults lack both
    "esm": {"pad_token_id": 3, "mask_token_id": 3},
    "gemma3n_text": {"num_kv_shared_layers": 0},
    "reformer": {"axial_pos_embds_dim": [32, 32]},          # sums to the hidden size
    # hybrids whose defaults put no attention layer among the first layers
    "bamba": {"num_hidden_layers": 2, "attn_layer_indices": [1]},
    "jamba": {"num_hidden_layers": 2, "attn_layer_period": 2, "attn_layer_offset": 1,
              "expert_layer_period": 2, "expert_layer_offset": 1},
    "granitemoehybrid": {"num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]},
    "recurrent_gemma": {"num_hidden_layers": 3},            # block_types cycle: recurrent, recurrent, attention
    "inkling2_loop_text": {"n_layers_per_attn_res_block": 1, "loop_layer_index_start": 1,   # layer 1 looped
                           "loop_layer_index_end": 2, "loop_num_passes": 2},              # (the default: 6..17)
    "xmod": {"default_language": "en_XX"},                  # its adapters' language, as set_default_language saves it
    # (also as dots3_note's text config) layers kept: indexed, indexed, sliding; the sliding layer's
    # own sizes shrunk alike (the release: 64 heads there, 128 on the others; a wider latent), its
    # head_dim = qk_nope + qk_rope as required
    "dots3_note_text": {"per_layer_config": {2: {"num_attention_heads": 2, "num_key_value_heads": 2,
                                                 "kv_lora_rank": 64}}},
}


def tiny_config(model_type: str, mapping: str = "causal"):
    """The tiny config of ``model_type`` (a key of transformers' CONFIG_MAPPING); for the
    causal-LM mapping, ``is_decoder`` is on where the config has it (as a causal-LM checkpoint has)."""
    from transformers import CONFIG_MAPPING
    cls = CONFIG_MAPPING[model_type]
    names = {f.name for f in dataclasses.fields(cls)}
    extra = {"is_decoder": True} if mapping == "causal" and "is_decoder" in names else {}
    return cls(**shrunk_kwargs(cls, cls(), {**extra, **OVERRIDES.get(model_type, {})}))


def shrunk_kwargs(cls, default, extra: dict) -> dict:
    """Constructor keywords: every known size field shrunk, per-layer lists cut, sub-configs
    shrunk recursively (as dicts), special token ids moved into the tiny vocabulary."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name in names:
        value = _read(default, name)
        if name in SIZES and (isinstance(value, int) and not isinstance(value, bool) and value > 0
                              or value is None and name in FILL_NONE):
            kwargs[name] = SIZES[name]
        elif name in TOKEN_IDS and isinstance(value, int):
            kwargs[name] = TOKEN_IDS[name]
        elif (name.endswith("_token_id") or name.endswith("_token_index")) and isinstance(value, int) \
                and value >= VOCAB - 4:
            kwargs[name] = VOCAB - 1 - len([k for k in kwargs if k.endswith(("_token_id", "_token_index"))]) % 4
        elif hasattr(value, "to_dict") and name in getattr(cls, "sub_configs", {}):
            kwargs[name] = _shrink_sub(value)
    kv = _read(default, "num_key_value_heads")
    if "num_key_value_heads" in names and kv is None:
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", HEADS)
    elif "num_key_value_heads" in names and isinstance(kv, int):
        heads = kwargs.get("num_attention_heads", HEADS)
        kwargs["num_key_value_heads"] = heads if kv >= (_read(default, "num_attention_heads") or kv) else min(2, heads)
    kwargs.update(_cut_layer_lists(default, names, kwargs))
    kwargs.update(extra)
    return kwargs


def _read(config, name):
    """config.name, also where a heterogeneous config keeps it per layer (the global value)."""
    try:
        return getattr(config, name, None)
    except RuntimeError:  # AmbiguousGlobalPerLayerAttributeError
        return config._getattr_without_heterogeneous_validation(name)


def _shrink_sub(sub) -> dict:
    """A nested config (text, vision, ...) shrunk like the top one, as a dict with its model_type."""
    cls = type(sub)
    try:
        kwargs = shrunk_kwargs(cls, sub, OVERRIDES.get(getattr(sub, "model_type", None), {}))
    except TypeError:  # not a dataclass config
        return sub.to_dict()
    return {**sub.to_dict(), **kwargs}


def _layer_count_field(default, names) -> str | None:
    for name in ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers"):
        if name in names and isinstance(_read(default, name), int):
            return name
    return None


def _cut_layer_lists(default, names, kwargs) -> dict:
    """Lists (or strings) with one entry per layer keep one layer of each kind, at least LAYERS
    layers; the layer count follows."""
    field = _layer_count_field(default, names)
    if field is None:
        return {}
    n = _read(default, field)
    values = {name: _read(default, name) for name in names if name != "architectures"}
    per_layer = {name: v for name, v in values.items() if n > 1 and (
        isinstance(v, (list, tuple)) and len(v) == n or isinstance(v, str) and "pattern" in name and len(v) == n)}
    if not per_layer:
        return {}
    keep, seen = [], set()
    for name, kinds in per_layer.items():  # the first layer of each kind, in every per-layer list
        for i, kind in enumerate(kinds):
            if (name, str(kind)) not in seen:
                seen.add((name, str(kind)))
                keep.append(i)
    keep = sorted(set(keep) | set(range(max(0, LAYERS - len(keep)))))
    out = {field: len(keep)}
    overrides = values.get("per_layer_config") or default.to_dict().get("per_layer_config")
    if isinstance(overrides, dict):  # heterogeneous configs: per-layer overrides follow their layers
        out["per_layer_config"] = {keep.index(int(i)): v for i, v in overrides.items() if int(i) in keep}
    for name, value in per_layer.items():
        picked = [value[i] for i in keep]
        out[name] = "".join(picked) if isinstance(value, str) else type(value)(picked)
    return out
