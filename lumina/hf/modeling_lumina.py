"""Lumina's decoder-only language model for Hugging Face transformers: MoD, hybrid and MoE.

`lumina export` writes this file next to the weights for the models Hugging Face has no class
for (Mixture-of-Depths, MoE+MoD hybrid, MoE with no-op experts); it loads with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`. It imports only torch and
transformers. Weights carry HF Llama's and Mixtral's names; a MoD layer adds `mod_router` and
`mod_predictor`.

The computation is Lumina's (lumina/model), block by block:
- Block: pre-norm, `x + attn(norm(x))`, then `+ mlp(norm(.))`; RMSNorm in fp32; rotate-half RoPE;
  causal grouped-query attention; SwiGLU MLPs; no biases.
- MoE: router softmax in fp32, top-k (equal probabilities go to the lower expert), weights
  renormalised over the k chosen, dropless like HF Mixtral. Router outputs past
  `num_local_experts` are no-op experts: that share of the token stays on the residual.
- MoD (Raposo et al. 2024): a scalar router scores every token; the selected tokens run the
  whole block on their own, in position order and at their true RoPE positions, and the update
  is scaled by sigmoid(score): `x + sigmoid(r) * (block(x) - x)`. The others skip the block.
  `mod_routing="predictor"` (default) selects the tokens whose causal predictor logit is > 0, so
  the output at t depends only on tokens <= t, which generation needs (Lumina's `causal=True`).
  `mod_routing="topk"` selects the top ceil(capacity * T) router scores of each sequence, as
  Lumina trains and evaluates; that looks at later tokens and is for scoring whole texts.
- No KV cache: each generation step re-runs the last `max_position_embeddings` tokens, as
  `lumina generate` does (a cache for layers that skip tokens is not implemented).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

_MOD_ROUTING = ("predictor", "topk")


class LuminaConfig(PretrainedConfig):
    model_type = "lumina"

    def __init__(self, vocab_size: int = 2048, hidden_size: int = 96, intermediate_size: int = 320,
                 num_hidden_layers: int = 4, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                 max_position_embeddings: int = 128, lumina_rope_theta: float = 10000.0,
                 rms_norm_eps: float = 1e-5, initializer_range: float = 0.02, tie_word_embeddings: bool = False,
                 num_local_experts: int = 0, num_experts_per_tok: int = 2, num_noop_experts: int = 0,
                 mod_layers: list[int] | None = None, mod_capacity: float = 0.5, mod_predictor_hidden: int = 128,
                 mod_routing: str = "predictor", **kwargs):
        if mod_routing not in _MOD_ROUTING:
            raise ValueError(f"mod_routing={mod_routing!r} is invalid: choose one of {', '.join(_MOD_ROUTING)}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        # Named apart from `rope_theta`, which transformers 5 moves into its own rope_parameters.
        self.lumina_rope_theta = lumina_rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.num_local_experts = num_local_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.num_noop_experts = num_noop_experts
        self.mod_layers = list(mod_layers or [])
        self.mod_capacity = mod_capacity
        self.mod_predictor_hidden = mod_predictor_hidden
        self.mod_routing = mod_routing
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class LuminaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (..., head_dim) for integer positions (...), rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class LuminaAttention(nn.Module):
    def __init__(self, config: LuminaConfig):
        super().__init__()
        d, h, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.heads, self.kv_heads, self.head_dim = h, kv, d // h
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(h * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape                                                      # cos, sin: (B, T, hd)
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos.unsqueeze(1), sin.unsqueeze(1)), apply_rope(k, cos.unsqueeze(1), sin.unsqueeze(1))
        groups = self.heads // self.kv_heads   # query head i reads key/value head i // groups
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)            # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class LuminaMLP(nn.Module):
    def __init__(self, config: LuminaConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LuminaExpert(nn.Module):
    """One SwiGLU expert under Mixtral's names: w1 gate, w3 up, w2 down."""

    def __init__(self, config: LuminaConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.w1 = nn.Linear(d, f, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LuminaSparseMoe(nn.Module):
    def __init__(self, config: LuminaConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts + config.num_noop_experts, bias=False)
        self.experts = nn.ModuleList(LuminaExpert(config) for _ in range(config.num_local_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(-1, x.shape[-1])                                              # (S, D)
        probs = torch.softmax(F.linear(xf.float(), self.gate.weight.float()), dim=-1)  # (S, E + noop)
        top_p, index = torch.sort(probs, dim=-1, descending=True, stable=True)
        top_p, index = top_p[:, : self.top_k], index[:, : self.top_k]               # (S, k)
        weights = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(xf)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(index == e, as_tuple=True)
            if token.numel():
                y = expert(xf[token]) * weights[token, slot].unsqueeze(-1).to(xf.dtype)
                out.index_add_(0, token, y)
        return out.view_as(x)


class LuminaDecoderLayer(nn.Module):
    def __init__(self, config: LuminaConfig, routed: bool):
        super().__init__()
        self.input_layernorm = LuminaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LuminaAttention(config)
        self.post_attention_layernorm = LuminaRMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.num_local_experts:
            self.block_sparse_moe = LuminaSparseMoe(config)
        else:
            self.mlp = LuminaMLP(config)
        self.routed = routed
        if routed:
            self.capacity, self.routing = config.mod_capacity, config.mod_routing
            self.mod_router = nn.Linear(config.hidden_size, 1, bias=False)
            self.mod_predictor = nn.Sequential(nn.Linear(config.hidden_size, config.mod_predictor_hidden), nn.SiLU(),
                                               nn.Linear(config.mod_predictor_hidden, 1))

    def block(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.post_attention_layernorm(x)
        return x + (self.block_sparse_moe(h) if hasattr(self, "block_sparse_moe") else self.mlp(h))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if not self.routed:
            return self.block(x, cos, sin)
        B, T, D = x.shape
        scores = self.mod_router(x).squeeze(-1)                                      # (B, T)
        valid = None
        if self.routing == "topk":
            k = max(1, math.ceil(self.capacity * T))
            # Equal scores go to the earlier position; the chosen tokens run in position order.
            order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices[:, :k]
            index = torch.sort(order, dim=1).values                                  # (B, k)
        else:
            selected = self.mod_predictor(x).squeeze(-1) > 0                          # (B, T)
            counts = selected.sum(1)
            kmax = int(counts.max())
            if kmax == 0:
                return x
            # Selected positions first, in order; rows with fewer are padded with unselected
            # positions, which come after every selected one so causal attention never reaches them.
            key = (~selected).long() * T + torch.arange(T, device=x.device)
            index = torch.sort(key, dim=1).indices[:, :kmax]
            valid = torch.arange(kmax, device=x.device).unsqueeze(0) < counts.unsqueeze(1)
        gather = index.unsqueeze(-1)
        xs = torch.gather(x, 1, gather.expand(-1, -1, D))                             # (B, k, D)
        ys = self.block(xs, torch.gather(cos, 1, gather.expand(-1, -1, cos.shape[-1])),
                        torch.gather(sin, 1, gather.expand(-1, -1, sin.shape[-1])))
        gate = torch.sigmoid(torch.gather(scores, 1, index)).unsqueeze(-1).to(x.dtype)
        update = xs + gate * (ys - xs)
        if valid is not None:
            update = torch.where(valid.unsqueeze(-1), update, xs)
        return x.scatter(1, gather.expand(-1, -1, D), update)


class LuminaPreTrainedModel(PreTrainedModel):
    config_class = LuminaConfig
    base_model_prefix = "model"
    _no_split_modules = ["LuminaDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """Every weight comes from the exported checkpoint; nothing to draw."""


class LuminaModel(LuminaPreTrainedModel):
    def __init__(self, config: LuminaConfig):
        super().__init__(config)
        routed = set(config.mod_layers)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LuminaDecoderLayer(config, i in routed) for i in range(config.num_hidden_layers))
        self.norm = LuminaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = rope_tables(positions, self.config.hidden_size // self.config.num_attention_heads,
                               self.config.lumina_rope_theta)                       # (B, T, hd)
        x = self.embed_tokens(input_ids)                                              # (B, T, D)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class LuminaForCausalLM(LuminaPreTrainedModel, GenerationMixin):
    def __init__(self, config: LuminaConfig):
        super().__init__(config)
        self.model = LuminaModel(config)
        # Tied embeddings read the input embedding directly, so no tying machinery is involved.
        self.lm_head = (None if config.tie_word_embeddings
                        else nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits (B, T, V); with labels (B, T), the mean next-token cross-entropy (labels shifted
        here, -100 ignored). Padding is refused: MoD routes over whole sequences."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("attention_mask has padded positions: a Lumina model runs unpadded "
                             "sequences only (MoD selects tokens per whole sequence); pass one text at a time")
        hidden = self.model(input_ids)
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      **kwargs) -> dict:
        """The whole text so far, up to the training length: no cache (module docstring)."""
        window = self.config.max_position_embeddings
        mask = None if attention_mask is None else attention_mask[:, -window:]
        return {"input_ids": input_ids[:, -window:], "attention_mask": mask}
