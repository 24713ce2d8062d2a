"""PyTorch port of musicnn's MSD_musicnn (musicnn/models.py: build_musicnn, num_filt_midend=64,
num_units_backend=200), for inference only. Input: log-mel patches (batch, 187 frames, 96 mels)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

N_MELS = 96
N_FRAMES = 187
N_TAGS = 50
EMBED_DIM = 200
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default


class MusicnnOutput(NamedTuple):
    dense_preact: torch.Tensor  # (B, 200) dense(1506->200) before ReLU: TF `model/dense/BiasAdd`
    penultimate: torch.Tensor  # (B, 200) after ReLU and batch norm: TF features['penultimate']
    logits: torch.Tensor  # (B, 50)
    taggram: torch.Tensor  # (B, 50) sigmoid(logits)


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=BN_EPS)


class MusicnnMSD(nn.Module):
    """Front-end (timbral 7x38/7x67 and temporal 128/64/32 x1 filters, max-pooled over frequency),
    mid-end (three 7-tap 1-d convs with dense and residual connections), back-end (temporal max+mean
    pooling, BN, dense 200, ReLU, BN, dense 50)."""

    TEMPORAL = (128, 64, 32)

    def __init__(self, num_filt_frontend: float = 1.6, num_filt_midend: int = 64, num_units_backend: int = 200,
                 num_classes: int = N_TAGS, n_mels: int = N_MELS, literal: bool = False) -> None:
        super().__init__()
        #: run the front-end blocks in the TF graph's literal order (slower, same numbers); for tests
        self.literal = literal
        timbral = int(num_filt_frontend * 128)  # 204
        temporal = int(num_filt_frontend * 32)  # 51
        self.input_bn = _bn2d(1)
        self.timbral74 = nn.Conv2d(1, timbral, (7, int(0.4 * n_mels)))
        self.timbral74_bn = _bn2d(timbral)
        self.timbral77 = nn.Conv2d(1, timbral, (7, int(0.7 * n_mels)))
        self.timbral77_bn = _bn2d(timbral)
        for k in self.TEMPORAL:
            setattr(self, f"temporal{k}", nn.Conv2d(1, temporal, (k, 1)))
            setattr(self, f"temporal{k}_bn", _bn2d(temporal))
        front = 2 * timbral + 3 * temporal  # 561
        self.mid1 = nn.Conv1d(front, num_filt_midend, 7, padding=3)
        self.mid1_bn = _bn1d(num_filt_midend)
        self.mid2 = nn.Conv1d(num_filt_midend, num_filt_midend, 7, padding=3)
        self.mid2_bn = _bn1d(num_filt_midend)
        self.mid3 = nn.Conv1d(num_filt_midend, num_filt_midend, 7, padding=3)
        self.mid3_bn = _bn1d(num_filt_midend)
        pooled = 2 * (front + 3 * num_filt_midend)  # 1506
        self.pool_bn = _bn1d(pooled)
        self.dense = nn.Linear(pooled, num_units_backend)
        self.dense_bn = _bn1d(num_units_backend)
        self.out = nn.Linear(num_units_backend, num_classes)

    @staticmethod
    def _block(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        """conv -> ReLU -> BN -> max over the whole frequency axis: (B, C, T, F') -> (B, C, T).

        Inference BN is a per-channel affine map whose scale has the sign of gamma, and ReLU is monotone, so
        the max over frequency of BN(ReLU(z)) is BN(ReLU(max z)) where gamma > 0 and BN(ReLU(min z)) where
        gamma < 0. min z = -max(-z), and -z is the same conv with negated weights and bias. So: one conv with
        sign-flipped filters, one max, and ReLU and BN on (B, C, T) instead of the large (B, C, T, F') maps.
        Same numbers as the literal order (`_block_reference`).
        """
        sign = torch.where(bn.weight < 0, -1.0, 1.0).to(conv.weight.dtype)
        z = F.conv2d(x, conv.weight * sign[:, None, None, None], conv.bias * sign)
        m = z.amax(dim=3) * sign[:, None]
        return F.batch_norm(F.relu(m), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    @staticmethod
    def _block_reference(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        """The literal order of operations of the TF graph (slower); kept for tests."""
        return bn(F.relu(conv(x))).amax(dim=3)

    def forward(self, patches: torch.Tensor) -> MusicnnOutput:
        block = self._block_reference if self.literal else self._block
        x = self.input_bn(patches.unsqueeze(1))  # (B, 1, T, 96)
        # timbral filters: 'valid' after padding time by 3 on each side (TF tf.pad + padding='valid')
        xt = F.pad(x, (0, 0, 3, 3))
        feats = [
            block(xt, self.timbral74, self.timbral74_bn),
            block(xt, self.timbral77, self.timbral77_bn),
        ]
        # temporal filters: TF padding='same' with an even kernel pads (k-1)//2 before, k//2 after
        for k in self.TEMPORAL:
            xs = F.pad(x, (0, 0, (k - 1) // 2, k // 2))
            feats.append(block(xs, getattr(self, f"temporal{k}"), getattr(self, f"temporal{k}_bn")))
        front = torch.cat(feats, dim=1)  # (B, 561, T)

        m1 = self.mid1_bn(F.relu(self.mid1(front)))
        m2 = self.mid2_bn(F.relu(self.mid2(m1))) + m1
        m3 = self.mid3_bn(F.relu(self.mid3(m2))) + m2
        mid = torch.cat([front, m1, m2, m3], dim=1)  # (B, 753, T)

        # TF concatenates [max, mean] on a trailing axis and flattens: features interleave (max_c, mean_c)
        pooled = torch.stack([mid.amax(dim=2), mid.mean(dim=2)], dim=2).flatten(1)  # (B, 1506)
        dense_preact = self.dense(self.pool_bn(pooled))
        penultimate = self.dense_bn(F.relu(dense_preact))
        logits = self.out(penultimate)
        return MusicnnOutput(dense_preact, penultimate, logits, torch.sigmoid(logits))


def load_state(model: MusicnnMSD, state: dict[str, torch.Tensor]) -> MusicnnMSD:
    """Load a converted state dict strictly (BN `num_batches_tracked` counters are filled in)."""
    full = dict(state)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            full.setdefault(f"{name}.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    model.load_state_dict(full, strict=True)
    return model.eval()
