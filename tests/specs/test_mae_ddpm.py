"""MAE and the DDPM U-Net, held to independent ports of their reference code.

``_ReferenceMAE`` follows facebookresearch/mae ``models_mae.py`` (MaskedAutoencoderViT with timm's Block,
the numpy 2-D sin-cos tables of ``util/pos_embed.py`` and ``random_masking``, here with an optional noise
argument). ``_ReferenceUNet`` follows hojonathanho/diffusion ``diffusion_tf/models/unet.py`` with the module
names of its PyTorch port (pesser/pytorch_diffusion ``model.py``). Both are written from the reference
code for these tests; the specs are built by nasforge and compared output for output, and their counts
are compared with the references' ``parameters()`` and torch's FlopCounterMode (on the meta device for
the big members, so nothing large is allocated).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

import nasforge
from nasforge.ops.embedding import sincos_grid_table

ROOT = Path(__file__).resolve().parents[2]
MAE = ROOT / "specs" / "models" / "mae.yaml"
DDPM = ROOT / "specs" / "models" / "ddpm_unet.yaml"


def _random_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every float entry of a state_dict (norm weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        is_norm_weight = key.rpartition(".")[0].rpartition(".")[2].startswith(("norm", "decoder_norm")) \
            and key.endswith("weight")
        state[key] = 1 + 0.1 * noise if is_norm_weight else 0.05 * noise
    return state


def _flop_count(module: nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() // 2


# -- MAE reference -------------------------------------------------------------------------------------

def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _sincos_2d(dim: int, grid_size: int) -> np.ndarray:
    """util/pos_embed.get_2d_sincos_pos_embed with cls_token=True: a zero row, then the grid (w first)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([_sincos_1d(dim // 2, grid[0]), _sincos_1d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    """timm's ViT Block as MAE uses it (qkv_bias, LayerNorm eps 1e-6, MLP ratio 4)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class _ReferenceMAE(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([_Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([_Block(decoder_embed_dim, decoder_num_heads)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        if self.pos_embed.device.type != "meta":
            side = int(num_patches ** 0.5)
            self.pos_embed.data.copy_(torch.from_numpy(_sincos_2d(embed_dim, side)).float()[None])
            self.decoder_pos_embed.data.copy_(torch.from_numpy(_sincos_2d(decoder_embed_dim, side)).float()[None])

    @staticmethod
    def random_masking(x, mask_ratio, noise=None):
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x_masked = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, length], device=x.device)
        mask[:, :len_keep] = 0
        return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

    def forward(self, imgs, mask_ratio=0.75, noise=None):
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]


MAE_MEMBERS = {  # variant -> reference arguments (mae_vit_*_dec512d8b)
    "mae_vit_base": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "mae_vit_large": {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "mae_vit_huge": {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16},
}
SMALL_MAE = {"image_size": 64, "dim": 96, "depth": 2, "heads": 3, "decoder_dim": 64, "decoder_depth": 2,
             "decoder_heads": 4}
SMALL_MAE_REF = {"img_size": 64, "embed_dim": 96, "depth": 2, "num_heads": 3, "decoder_embed_dim": 64,
                 "decoder_depth": 2, "decoder_num_heads": 4}
# nasforge's class_token / mask_token ops keep their parameters inside the op's module
_MAE_TO_SPEC = {"cls_token": "cls_token.token", "mask_token": "unshuffle.mask_token.token"}


def _load_mae_pair(**overrides):
    """The spec's module and the reference with the same random weights."""
    gm = nasforge.load(MAE, **{**SMALL_MAE, **overrides}).build()
    ref = _ReferenceMAE(**SMALL_MAE_REF)
    trainable = {k: v for k, v in _random_state(ref).items() if "pos_embed" not in k}
    spec_state = {_MAE_TO_SPEC.get(k, k): v for k, v in trainable.items()}
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in spec_state.items()}
    gm.load_state_dict(spec_state)
    ref.load_state_dict(trainable, strict=False)
    return gm, ref


def test_mae_eval_mode_equals_the_reference_keeping_the_first_patches():
    gm, ref = _load_mae_pair()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    first = torch.arange(16.0).expand(2, 16)   # noise that keeps patches 0..3 in order
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref.eval()(x, noise=first), rtol=1e-4, atol=1e-5)


def test_mae_training_mode_masks_at_random_exactly_as_the_reference():
    gm, ref = _load_mae_pair()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    gm.train()
    ref.train()
    with torch.no_grad():
        torch.manual_seed(5)
        got = gm(x)
        torch.manual_seed(5)
        want = ref(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(gm(x), got)   # fresh masks on the next call


def test_mae_can_output_the_mask_for_the_loss():
    gm, ref = _load_mae_pair(output_mask=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    gm.train()
    with torch.no_grad():
        torch.manual_seed(6)
        pred, mask = gm(x)
        torch.manual_seed(6)
        noise = torch.rand(2, 16)
        torch.testing.assert_close(pred, ref.train()(x, noise=noise), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mask, ref.random_masking(torch.zeros(2, 16, 1), 0.75, noise)[1])
    assert mask.sum().item() == 2 * 12


def test_mae_eval_random_draws_masks_in_eval_mode_too():
    gm, ref = _load_mae_pair(masking_eval="random")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.manual_seed(9)
        got = gm(x)
        torch.manual_seed(9)
        torch.testing.assert_close(got, ref.eval()(x), rtol=1e-4, atol=1e-5)


def test_mae_sincos_tables_are_the_references():
    for dim, side in ((768, 14), (512, 14), (1280, 16)):
        want = torch.from_numpy(_sincos_2d(dim, side)).float()
        torch.testing.assert_close(sincos_grid_table(side, side, dim), want[1:], rtol=0, atol=1e-6)
        assert not want[0].any()   # the class position: zeros, so the spec adds no table to it


@pytest.mark.parametrize("variant", list(MAE_MEMBERS))
def test_mae_counts_equal_the_reference(variant):
    """Trainable parameters (the pos tables are frozen nn.Parameters there, buffers here) and MACs with
    the reference's 75% masking, counted on the meta device."""
    spec = nasforge.load(MAE, variant=variant)
    totals = spec.check().totals
    with torch.device("meta"):
        ref = _ReferenceMAE(**MAE_MEMBERS[variant])
        macs = _flop_count(ref, torch.empty(1, 3, 224, 224))
    trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    frozen = ref.pos_embed.numel() + ref.decoder_pos_embed.numel()
    assert totals.params == trainable == spec.paper["params"]
    assert sum(p.numel() for p in ref.parameters()) == trainable + frozen
    assert totals.macs == macs == spec.paper["macs"]


def test_mae_base_counts_by_hand():
    totals = nasforge.load(MAE).check().totals

    def block(c):
        return 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)

    encoder = (3 * 16 * 16 * 768 + 768) + 768 + 12 * block(768) + 2 * 768
    decoder = (768 * 512 + 512) + 512 + 8 * block(512) + 2 * 512 + (512 * 768 + 768)
    assert (encoder, decoder) == (85_647_360, 26_008_320)
    assert totals.params == encoder + decoder == 111_655_680
    assert totals.params + 197 * (768 + 512) == 111_907_840   # with the frozen sin-cos tables

    def block_macs(n, c):
        return n * c * 12 * c + 2 * n * n * c    # qkv, proj, fc1, fc2; Q K^T and A V

    kept = int(196 * (1 - 0.75)) + 1             # 49 patches and the class token
    assert totals.macs == (196 * 768 * 768 + 12 * block_macs(kept, 768) + kept * 768 * 512
                           + 8 * block_macs(197, 512) + 197 * 512 * 768) == 9_781_133_312


def test_mae_layout():
    spec = nasforge.load(MAE)
    shapes = {path: tuple(node.outputs[0].concrete_shape({"B": 1})) for path, node in spec.graph.nodes.items()}
    assert shapes["patch_embed.tokens"] == (1, 196, 768)
    assert [tuple(o.concrete_shape({"B": 1})) for o in spec.graph.nodes["masking"].outputs] == \
        [(1, 49, 768), (1, 196), (1, 196)]
    assert shapes["cls_token"] == (1, 50, 768)
    assert shapes["unshuffle.mask_token"] == (1, 196, 512)
    assert shapes["unshuffle.with_cls"] == (1, 197, 512)
    assert shapes["pred"] == (1, 196, 768)


def test_small_mae_exports_with_a_dynamic_batch():
    spec = nasforge.load(MAE, **SMALL_MAE)
    gm = spec.build()
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other), gm(other))


# -- DDPM reference ------------------------------------------------------------------------------------

def _ddpm_timestep_embedding(timesteps, embedding_dim):
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -emb)
    emb = timesteps.float()[:, None] * emb[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)


def _norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class _ResnetBlock(nn.Module):
    def __init__(self, cin, cout, temb, dropout):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class _AttnBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, height, width = x.shape
        q = self.q(h).reshape(b, c, height * width).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, height * width)
        w = torch.softmax(torch.bmm(q, k) * int(c) ** -0.5, dim=2)
        v = self.v(h).reshape(b, c, height * width)
        return x + self.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, height, width))


class _Resample(nn.Module):
    def __init__(self, channels, down):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x):
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))   # TensorFlow's SAME padding at stride 2
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _ReferenceUNet(nn.Module):
    def __init__(self, ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.1, in_channels=3, resolution=32):
        super().__init__()
        self.ch, self.num_res_blocks, self.levels = ch, num_res_blocks, len(ch_mult)
        temb = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult, res = (1,) + tuple(ch_mult), resolution
        self.down = nn.ModuleList()
        for i in range(self.levels):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                level.block.append(_ResnetBlock(block_in, block_out, temb, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(_AttnBlock(block_in))
            if i != self.levels - 1:
                level.downsample = _Resample(block_in, down=True)
                res //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = _ResnetBlock(block_in, block_in, temb, dropout)
        self.mid.attn_1 = _AttnBlock(block_in)
        self.mid.block_2 = _ResnetBlock(block_in, block_in, temb, dropout)
        up = []
        for i in reversed(range(self.levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i]
            for j in range(num_res_blocks + 1):
                skip = ch * (in_mult[i] if j == num_res_blocks else ch_mult[i])
                level.block.append(_ResnetBlock(block_in + skip, block_out, temb, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(_AttnBlock(block_in))
            if i != 0:
                level.upsample = _Resample(block_in, down=False)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](_ddpm_timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for i in range(self.levels):
            for j in range(self.num_res_blocks):
                h = self.down[i].block[j](hs[-1], temb)
                if len(self.down[i].attn):
                    h = self.down[i].attn[j](h)
                hs.append(h)
            if i != self.levels - 1:
                hs.append(self.down[i].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(self.levels)):
            for j in range(self.num_res_blocks + 1):
                h = self.up[i].block[j](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i].attn):
                    h = self.up[i].attn[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _port_to_spec(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The port's state_dict under the spec's names: each attention's q, k, v 1x1 convs become the fused
    attention.qkv Linear, proj_out becomes attention.proj; everything else keeps its name."""
    out, prefixes = {}, set()
    for key, value in state.items():
        head, _, layer = key.rpartition(".")[0].rpartition(".")
        if layer in ("q", "k", "v", "proj_out"):
            prefixes.add(head)
            continue
        out[key] = value
    for head in prefixes:
        for leaf in ("weight", "bias"):
            parts = [state[f"{head}.{n}.{leaf}"] for n in ("q", "k", "v")]
            out[f"{head}.attention.qkv.{leaf}"] = torch.cat(parts).flatten(1) if leaf == "weight" else torch.cat(parts)
            proj = state[f"{head}.proj_out.{leaf}"]
            out[f"{head}.attention.proj.{leaf}"] = proj.flatten(1) if leaf == "weight" else proj
    return out


@pytest.mark.parametrize("overrides, ref_args", [
    pytest.param({"ch": 32, "dropout": 0.0}, {"ch": 32, "dropout": 0.0}, id="ch32"),
    pytest.param({}, {}, id="cifar10", marks=pytest.mark.slow),
])
def test_ddpm_equals_the_reference(overrides, ref_args):
    gm = nasforge.load(DDPM, **overrides).build()
    ref = _ReferenceUNet(**ref_args).eval()
    state = _random_state(ref)
    ref.load_state_dict(state)
    spec_state = _port_to_spec(state)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in spec_state.items()}
    gm.load_state_dict(spec_state)
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([3, 917])
    with torch.no_grad():
        out = gm(x, t)
        torch.testing.assert_close(out, ref(x, t), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(gm(x, torch.tensor([4, 917])), out)   # the timestep conditions the output


def test_ddpm_counts_equal_the_reference():
    totals = nasforge.load(DDPM).check().totals
    with torch.device("meta"):
        ref = _ReferenceUNet()
        macs = _flop_count(ref, torch.empty(1, 3, 32, 32), torch.zeros(1, dtype=torch.int64))
    assert totals.params == sum(p.numel() for p in ref.parameters()) == 35_746_307
    assert totals.macs == macs == 6_221_856_768


def test_ddpm_parameter_breakdown():
    rows = nasforge.load(DDPM).summary().rows
    by_part: dict[str, int] = {}
    for row in rows:
        by_part[row.path.split(".")[0]] = by_part.get(row.path.split(".")[0], 0) + row.params
    assert by_part == {"temb": 328_704, "conv_in": 3_584, "down": 10_190_720, "mid": 2_888_704,
                       "up": 22_330_880, "norm_out": 256, "act_out": 0, "conv_out": 3_459}
    c = 256   # an attention layer at 16x16: GroupNorm, then q, k, v and proj_out (fused or not)
    attn = {r.path: r.params for r in rows if r.path.startswith("down.1.attn.0.")}
    assert sum(attn.values()) == 2 * c + 4 * (c * c + c)


def test_ddpm_layout():
    spec = nasforge.load(DDPM)

    def shape(path):
        return tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))

    assert shape("temb.embed") == (1, 128)
    assert shape("temb.dense.1") == (1, 512)
    assert shape("down.0.downsample.conv") == (1, 128, 16, 16)
    assert shape("down.1.attn.1.residual") == (1, 256, 16, 16)
    assert shape("down.3.block.1.residual") == (1, 256, 4, 4)
    assert "down.3.downsample.conv" not in spec.graph.nodes and "down.0.attn.0.norm" not in spec.graph.nodes
    assert shape("mid.attn_1.residual") == (1, 256, 4, 4)
    assert shape("up.3.cat.0") == (1, 512, 4, 4)
    assert shape("up.1.cat.2") == (1, 256 + 128, 16, 16)
    assert shape("up.0.cat.2") == (1, 256, 32, 32)
    assert shape("conv_out") == (1, 3, 32, 32)
    attention = [p for p, n in spec.graph.nodes.items() if n.op == "attention"]
    assert attention == ["down.1.attn.0.attention", "down.1.attn.1.attention", "mid.attn_1.attention",
                         "up.1.attn.0.attention", "up.1.attn.1.attention", "up.1.attn.2.attention"]
