"""BERT: an encoder-only Transformer from the same parts (BERT's and DistilBERT's layout).

    x_0    = LayerNorm(E[ids] + P[positions] + S[segments])     (batch, seq, d_model), no sqrt(d_model) scale
    x_l    = EncoderLayer_l(x_{l-1}, padding mask)              post-norm, GELU (erf), eps from the config
    pooled = tanh(x_N[:, 0] W_p + b_p)                          the [CLS] position ("pooler"; optional)

Each layer is ``glassformer.nn.EncoderLayer(norm_first=False)``, the seq2seq encoder's module. A DistilBERT
checkpoint is the same model with ``type_vocab_size=0`` (no segment embeddings) and no pooler; its classifier's
``pre_classifier`` is the pooler with ReLU instead of tanh (``pooler_activation="relu"``).

``BertForSequenceClassification`` puts dropout and a linear layer over the pooled output (as ``transformers``)
or over the mean of the real tokens' hidden states (``classifier_pooling="mean"``, as sentence-transformers
models such as all-MiniLM-L6-v2 were trained to be read).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from glassformer.checkpoints import load_state_dict_checked
from glassformer.checkpoints.huggingface_bert import load_bert, save_bert
from glassformer.models.config import ModelConfig
from glassformer.models.outputs import BertOutput
from glassformer.models.pretrained import PretrainedMixin, build_for_weights
from glassformer.nn.config import BlockConfig, StackConfig
from glassformer.nn.dropout import Dropout
from glassformer.nn.layers import zero_init_projections
from glassformer.nn.linear import Linear
from glassformer.nn.stacks import Stack
from glassformer.options import check_fields

POOLER_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu}
CLASSIFIER_POOLINGS = ("pooler", "mean")


@dataclasses.dataclass
class BertConfig(ModelConfig):
    """Configuration of ``Bert`` and ``BertForSequenceClassification``; the shape defaults are BERT-base.

    ``dropout`` acts on the embeddings and sublayer outputs (hidden_dropout_prob), ``attention_dropout`` on the
    attention weights (attention_probs_dropout_prob). ``type_vocab_size=0`` means no segment embeddings.
    ``num_labels``, ``labels``, ``classifier_pooling`` and ``classifier_dropout`` are read by the classifier only.

    Training-speed options (the fast recipe, ``glassformer.training.recipes``; each a ``BlockConfig`` field):
    ``qk_norm`` (an RMS norm of each head's queries and keys), ``zero_init_projections`` (W_O and W_2 start at zero),
    and ``activation="relu2"``.
    """

    model_type = "bert"

    vocab_size: int = 30522
    max_seq_length: int = 512
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pooler: bool = True
    pooler_activation: str = "tanh"
    pad_token_id: int = 0
    num_labels: int = 2
    labels: list[str] | None = None  # label names, index = class id
    classifier_pooling: str = "pooler"
    classifier_dropout: float | None = None  # None: the same as dropout
    flavor: str = "bert"  # "bert" or "distilbert": the Hugging Face layout it is exported to
    qk_norm: bool = False
    zero_init_projections: bool = False

    def stack(self) -> StackConfig:
        """The layer stack: unscaled token embeddings (the padding row kept at zero) + learned positions + segments,
        normalized; ``num_layers`` post-norm blocks, no final norm."""
        return StackConfig(self.block(), self.num_layers, self.vocab_size, self.max_seq_length, "learned",
                           scale_embeddings=False, type_vocab_size=self.type_vocab_size, embedding_norm=True,
                           final_norm=False, pad_token_id=self.pad_token_id)  # fmt: skip

    def block(self) -> BlockConfig:
        """Every layer's block: post-norm self-attention over the padding mask, GELU."""
        return BlockConfig(
            d_model=self.d_model, num_heads=self.num_heads, d_ff=self.d_ff, norm_first=False,
            layer_norm_eps=self.layer_norm_eps, activation=self.activation, dropout=self.dropout,
            attention_dropout=self.attention_dropout, qk_norm=self.qk_norm,
            zero_init_projections=self.zero_init_projections,
        )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range (glassformer.options)
        self.block()  # validates every block option once, in nn.config
        if self.pooler_activation not in POOLER_ACTIVATIONS:
            raise ValueError(f"unknown pooler_activation {self.pooler_activation!r}; choose 'tanh' or 'relu'")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(
                f"unknown classifier_pooling {self.classifier_pooling!r}; choose one of {CLASSIFIER_POOLINGS}"
            )
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ValueError(f"{len(self.labels)} label names given for num_labels={self.num_labels}")
        if self.flavor not in ("bert", "distilbert"):
            raise ValueError(f"unknown flavor {self.flavor!r}; choose 'bert' or 'distilbert'")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def label_names(self) -> list[str]:
        return self.labels or [f"LABEL_{i}" for i in range(self.num_labels)]


def mean_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the real tokens' vectors: ``(batch, seq, d)`` and ``(batch, seq)`` 1/0 -> ``(batch, d)``.

    m = Σ_t mask_t h_t / max(Σ_t mask_t, 1e-9)
    """
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class Bert(PretrainedMixin, Stack):
    """Encoder-only model: a ``Stack`` of encoder layers (``glassformer.nn.stacks``) and BERT's pooler.
    ``model(input_ids, attention_mask, token_type_ids)`` -> ``(batch, seq, d_model)``."""

    config_class = BertConfig
    kind = "encoder"

    def __init__(self, config: BertConfig):
        super().__init__(config.stack())
        self.config = config
        self.pooler = Linear(config.d_model, config.d_model) if config.pooler else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialization: N(0, 0.02) for matrices and embeddings, zero biases, norms at γ=1, β=0 (W_O and
        W_2 zero with ``zero_init_projections``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embedding.weight[self.config.pad_token_id].zero_()
        zero_init_projections(self.layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_pooled: bool = False,
    ) -> torch.Tensor | BertOutput:
        """
        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)``, 1 at real tokens, 0 at padding; None = no padding.
            token_type_ids: ``(batch, seq)`` segment ids (0 first sentence, 1 second); None = all 0.
            output_hidden_states / output_attentions / return_pooled: return a ``BertOutput`` with them.

        Returns:
            the last hidden states ``(batch, seq, d_model)``, or a ``BertOutput`` if anything more was asked for.
        """
        batch, seq = input_ids.shape
        mask = None  # (batch, 1, 1, seq): every query may attend to the real keys; None when nothing is padded
        if attention_mask is not None:
            if attention_mask.shape != (batch, seq):
                raise ValueError(
                    f"attention_mask must have the shape of input_ids {(batch, seq)}, got {tuple(attention_mask.shape)}"
                )
            if not bool(attention_mask.all()):
                mask = attention_mask.bool()[:, None, None, :]

        x = self.embed(input_ids, token_type_ids=token_type_ids)  # x_0 = LayerNorm(E[ids] + P[positions] + S[segments])

        hidden_states, attentions = [x], []
        for layer in self.layers:
            x, weights = layer(x, mask, need_weights=output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        if not (output_hidden_states or output_attentions or return_pooled):
            return x
        return BertOutput(
            last_hidden_state=x,
            pooled_output=self.pool(x) if return_pooled else None,
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pooler: act(h_[CLS] W_p + b_p), ``(batch, seq, d_model)`` -> ``(batch, d_model)``."""
        if self.pooler is None:
            raise ValueError("this model has no pooler (pooler=False); use mean pooling instead")
        return POOLER_ACTIVATIONS[self.config.pooler_activation](self.pooler(hidden[:, 0]))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> Bert:
        """Load a glassformer checkpoint or a Hugging Face BERT / DistilBERT directory (config.json +
        model.safetensors or a weights-only pytorch_model.bin), from a path or, by model name, from the local
        Hugging Face cache. ``overrides`` replace config fields (e.g. ``dropout=0.0``). Returned in eval mode."""
        config_dict, tensors = load_bert(path)
        model = build_for_weights(cls, cls.config_class.from_dict({**config_dict, **overrides}), tensors)
        # a classifier checkpoint loaded as the bare encoder: its head is not part of this model
        encoder = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
        if model.pooler is None:
            encoder = {k: v for k, v in encoder.items() if not k.startswith("pooler.")}
        load_state_dict_checked(model, encoder)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, format: str = "glassformer", state_dict=None):
        """``format="glassformer"``: config.json + model.safetensors in glassformer's names; ``format="hf"``: a
        Hugging Face ``BertModel`` (or ``DistilBertModel``) directory that ``transformers`` opens."""
        if format == "glassformer":
            return super().save_pretrained(directory, state_dict)
        if format == "hf":
            return save_bert(directory, self.config.to_dict(), self.state_dict(), head=False)
        raise ValueError(f"unknown checkpoint format {format!r}; use 'glassformer' or 'hf'")


class BertForSequenceClassification(PretrainedMixin, nn.Module):
    """``model(input_ids, attention_mask, token_type_ids)`` -> logits ``(batch, num_labels)``.

    logits = Dropout(pool(Bert(x))) W_c + b_c,   pool = the pooler ("pooler") or the masked mean ("mean")
    """

    config_class = BertConfig

    def __init__(self, config: BertConfig):
        super().__init__()
        if config.classifier_pooling == "pooler" and not config.pooler:
            raise ValueError(
                "classifier_pooling='pooler' needs a pooler (pooler=True); or use classifier_pooling='mean'"
            )
        self.config = config
        self.bert = Bert(config)
        dropout = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = Dropout(dropout)
        self.classifier = Linear(config.d_model, config.num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (batch, seq, d_model)
        if self.config.classifier_pooling == "mean":
            pooled = mean_pooling(hidden, attention_mask)
        else:
            pooled = self.bert.pool(hidden)
        return self.classifier(self.dropout(pooled))  # (batch, num_labels)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_labels: int | None = None, **overrides):
        """Load a classifier checkpoint (glassformer, or ``transformers``' BertForSequenceClassification /
        DistilBertForSequenceClassification), or start one from an encoder checkpoint (BertModel, a
        sentence-transformers directory...) with a new, randomly initialized head of ``num_labels`` classes.
        ``overrides`` replace config fields (e.g. ``classifier_pooling="mean"``, ``labels=[...]``)."""
        config_dict, tensors = load_bert(path)
        if num_labels is not None:
            overrides["num_labels"] = num_labels
            if "labels" not in overrides and len(config_dict.get("labels") or []) != num_labels:
                overrides["labels"] = None
        config = cls.config_class.from_dict({**config_dict, **overrides})
        model = build_for_weights(cls, config, tensors)
        tensors = {(k if k.startswith("classifier.") else f"bert.{k}"): v for k, v in tensors.items()}
        head = {k: v for k, v in tensors.items() if k.startswith("classifier.")}
        fresh_head = not head or head["classifier.weight"].shape != model.classifier.weight.shape
        if fresh_head:  # an encoder checkpoint, or a head for another number of classes: keep the new head
            tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
            tensors.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
        if not config.pooler:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}
        load_state_dict_checked(model, tensors)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, format: str = "glassformer", state_dict=None):
        """``format="hf"`` writes a ``transformers`` BertForSequenceClassification (or DistilBERT) directory;
        only a classifier over the pooler has such a form (``classifier_pooling="pooler"``)."""
        if format == "glassformer":
            return super().save_pretrained(directory, state_dict)
        if format == "hf":
            if self.config.classifier_pooling != "pooler":
                raise ValueError(
                    "transformers' sequence classifiers read the pooler; a classifier_pooling='mean' model can "
                    "only be saved in glassformer format"
                )
            return save_bert(directory, self.config.to_dict(), self.state_dict(), head=True)
        raise ValueError(f"unknown checkpoint format {format!r}; use 'glassformer' or 'hf'")
