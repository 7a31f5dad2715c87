"""Textual inversion (Gal et al.), as diffusers' example trains it: HeadSculpt's `<back-view>` token
(Sec. 3.2, Eq. 6, appendix A.2).

A new token is added to the tokenizer, its embedding row starts as the init word's, and only that
row is optimised with Stable Diffusion's denoising loss on the user's photos; UNet, VAE and the rest
of the text encoder stay frozen. Instead of letting the optimiser touch the whole embedding matrix and
restoring the other rows after every step (the diffusers example), the trainable row is a separate
parameter that a forward hook puts in place of the token's looked-up embedding: gradients cannot
reach any other weight, and checkpoints hold one vector and its optimiser state, not the matrix.

The result is saved as diffusers' example saves `learned_embeds.safetensors` ({token: (1, dim)}), so
`pipeline.load_textual_inversion(file)` reads it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

# Captions for photos of the backs of heads. The last ones end in ", {}" as the view-dependent
# prompts do ("{prompt}, <back-view>"), so the token is learned in the place where it is used.
TEMPLATES = (
    "a photo of the {} of a head",
    "a photo of the {} of a person's head",
    "a close-up photo of the {} of a head",
    "a cropped photo of the {} of a head",
    "a good photo of the {} of a head",
    "a rendering of the {} of a head",
    "the {} of a head",
    "a head, {}",
    "a photo of a head, {}",
    "a DSLR portrait of a person, {}",
)


@dataclass
class TokenTrainingConfig:
    """Settings of `headsculpt learn-token`; defaults as HeadSculpt trained its token (appendix A.2)."""

    token: str = "<back-view>"
    init_word: str = "back"
    steps: int = 3000
    lr: float = 5e-4
    batch: int = 4
    resolution: int = 512
    seed: int = 0
    flip_probability: float = 0.5  # random horizontal flips, as the diffusers example does
    # AdamW as in diffusers' textual_inversion example.
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    checkpoint_every: int = 500


@dataclass
class TokenModels:
    """The parts of a Stable Diffusion pipeline that textual inversion needs."""

    tokenizer: Any  # transformers CLIPTokenizer
    text_encoder: Any  # transformers CLIPTextModel
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    scheduler: Any  # diffusers DDPMScheduler (the training noise schedule)


def add_token(tokenizer, text_encoder, token: str, init_word: str) -> int:
    """Add `token` to the tokenizer, grow the embedding matrix by one row initialised from
    `init_word`'s embedding, and return the new token id."""
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if len(init_ids) != 1:
        raise InputError(f"The init word {init_word!r} is {len(init_ids)} tokens for this tokenizer; "
                         "choose a single common word such as 'back'.")
    if tokenizer.add_tokens(token) == 0:
        raise InputError(f"The token {token!r} is already a word of this tokenizer; choose another, "
                         "such as '<back-view>'.")
    token_id = tokenizer.convert_tokens_to_ids(token)
    # mean_resizing would draw the new row at random; it is overwritten with the init word's row.
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[token_id] = weight[init_ids[0]]
    return token_id


def save_embedding(path: Path, token: str, vector: torch.Tensor) -> Path:
    """Write {token: (1, dim)} as safetensors, atomically (diffusers' learned_embeds format)."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({token: vector.detach().float().cpu().reshape(1, -1).contiguous()}, str(tmp),
              metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def images_digest(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.float().cpu().numpy().tobytes()).hexdigest()[:16]


class TokenTrainer:
    """One textual-inversion run as a `stages.loop.TrainableStage` (progress, checkpoints, resume)."""

    name = "learn-token"

    def __init__(self, models: TokenModels, pixels: torch.Tensor, cfg: TokenTrainingConfig,
                 device: torch.device | str = "cpu", models_id: str = ""):
        self.models = models
        self.cfg = cfg
        self.device = torch.device(device)
        # The frozen UNet and VAE keep their precision (fp16 on CUDA); the text encoder, which the
        # gradient passes through, and the trained row are float32, as in the diffusers example.
        self.dtype = models.unet.dtype
        self.total_iterations = cfg.steps
        self._fingerprint = {**{k: v for k, v in asdict(cfg).items() if k not in ("steps", "checkpoint_every")},
                             "images": images_digest(pixels), "models": models_id}
        for module in (models.text_encoder, models.unet, models.vae):
            module.requires_grad_(False)
            module.eval()  # no dropout: a step is a deterministic function of its random draws
        models.text_encoder.to(self.device, torch.float32)
        models.unet.to(self.device)
        models.vae.to(self.device)

        self.token_id = add_token(models.tokenizer, models.text_encoder, cfg.token, cfg.init_word)
        self.embeddings = models.text_encoder.get_input_embeddings()
        self.initial_vector = self.embeddings.weight[self.token_id].detach().clone()
        self.vector = torch.nn.Parameter(self.initial_vector.clone())
        self._hook = self.embeddings.register_forward_hook(self._substitute)
        self.optimizer = torch.optim.AdamW([self.vector], lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay, eps=cfg.eps)
        # Half-precision UNet (CUDA): its backward pass would underflow the tiny gradients of a mean
        # loss over 64x64 latents, so the loss is scaled, as the diffusers example does through
        # accelerate's mixed precision. The scaler is off (and changes nothing) in float32.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        # All randomness of training comes from this one CPU generator, whose state is checkpointed.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.prompt_ids = self._tokenize([t.format(cfg.token) for t in TEMPLATES])
        self.latent_mean, self.latent_std = self._encode_images(pixels)

    # -- building blocks -------------------------------------------------------------------------

    def _substitute(self, module, args, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the token embedding: the token's positions read the trainable vector."""
        is_token = (args[0] == self.token_id).unsqueeze(-1)
        return torch.where(is_token, self.vector.to(output.dtype), output)

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        tok = self.models.tokenizer
        return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def _encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution of every image and of its mirror image, computed once (the
        VAE is frozen): (N, 2, C, h, w) means and standard deviations; index 1 = flipped."""
        means, stds = [], []
        for flipped in (False, True):
            batch_means, batch_stds = [], []
            for chunk in pixels.split(4):
                chunk = chunk.flip(-1) if flipped else chunk
                dist = self.models.vae.encode(chunk.to(self.device, self.models.vae.dtype)).latent_dist
                batch_means.append(dist.mean.float())
                batch_stds.append(dist.std.float())
            means.append(torch.cat(batch_means))
            stds.append(torch.cat(batch_stds))
        return torch.stack(means, 1), torch.stack(stds, 1)

    def _loss(self, image: torch.Tensor, flipped: torch.Tensor, template: torch.Tensor,
              timesteps: torch.Tensor, latent_eps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Stable Diffusion's denoising loss for the given draws (all on the CPU, moved here)."""
        dev = self.device
        scaling = self.models.vae.config.scaling_factor
        mean = self.latent_mean[image.to(dev), flipped.long().to(dev)]
        std = self.latent_std[image.to(dev), flipped.long().to(dev)]
        latents = (mean + std * latent_eps.to(dev)) * scaling
        noise, timesteps = noise.to(dev), timesteps.to(dev)
        noisy = self.models.scheduler.add_noise(latents, noise, timesteps)
        hidden = self.models.text_encoder(self.prompt_ids[template.to(dev)])[0]
        prediction = self.models.unet(noisy.to(self.dtype), timesteps, hidden.to(self.dtype)).sample
        if self.models.scheduler.config.prediction_type == "v_prediction":
            target = self.models.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    # -- TrainableStage --------------------------------------------------------------------------

    def step(self, iteration: int) -> float:
        g, batch = self.generator, self.cfg.batch
        count, _, channels, h, w = self.latent_mean.shape
        image = torch.randint(count, (batch,), generator=g)
        flipped = torch.rand(batch, generator=g) < self.cfg.flip_probability
        template = torch.randint(len(TEMPLATES), (batch,), generator=g)
        timesteps = torch.randint(0, self.models.scheduler.config.num_train_timesteps, (batch,), generator=g)
        latent_eps = torch.randn(batch, channels, h, w, generator=g)
        noise = torch.randn(batch, channels, h, w, generator=g)
        loss = self._loss(image, flipped, template, timesteps, latent_eps, noise)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._write_row()
        return float(loss.detach())

    def _write_row(self) -> None:
        """Keep the text encoder's own row equal to the trained vector, so that the encoder can be
        used (or saved) as it is, hook or no hook."""
        with torch.no_grad():
            self.embeddings.weight[self.token_id] = self.vector.detach().to(self.embeddings.weight.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"vector": self.vector.detach().cpu().clone(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
                "fingerprint": dict(self._fingerprint)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["fingerprint"]
        changed = sorted(k for k in set(saved) | set(self._fingerprint) if saved.get(k) != self._fingerprint.get(k))
        if changed:
            raise InputError(f"The checkpoint was written with other settings ({', '.join(changed)}); "
                             "use the same settings to resume, or delete the checkpoint folder to start again.")
        with torch.no_grad():
            self.vector.copy_(state["vector"].to(self.vector))
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the scaler was off
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self._write_row()

    def save_preview(self, iteration: int, directory: Path) -> Path:
        """A snapshot of the embedding at this step, usable like the final file (an earlier step
        can generalise better than the last one)."""
        return save_embedding(Path(directory) / f"embedding-step-{iteration:06d}.safetensors",
                              self.cfg.token, self.vector)

    # -- results ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluation_loss(self, vector: torch.Tensor | None = None, timesteps: tuple[int, ...] = (100, 300, 500, 700, 900),
                        seed: int = 1234) -> float:
        """Mean denoising loss over a fixed set: every image (not flipped), the first caption, the
        given timesteps and noise drawn from `seed`. With `vector` it is measured for that embedding
        (e.g. `initial_vector`) instead of the trained one; the training state is left as it was."""
        g = torch.Generator().manual_seed(seed)
        count, _, channels, h, w = self.latent_mean.shape
        trained = self.vector.detach().clone()
        if vector is not None:
            self.vector.copy_(vector)
        total = 0.0
        try:
            for t in timesteps:
                for start in range(0, count, self.cfg.batch):
                    image = torch.arange(start, min(start + self.cfg.batch, count))
                    n = len(image)
                    latent_eps = torch.randn(n, channels, h, w, generator=g)
                    noise = torch.randn(n, channels, h, w, generator=g)
                    loss = self._loss(image, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long),
                                      torch.full((n,), t), latent_eps, noise)
                    total += float(loss) * n
        finally:
            self.vector.copy_(trained)
        return total / (count * len(timesteps))

    def learned_vector(self) -> torch.Tensor:
        return self.vector.detach().clone()

    def save(self, path: Path) -> Path:
        return save_embedding(path, self.cfg.token, self.vector)

    def close(self) -> None:
        """Remove the hook; the text encoder keeps the trained row in its own weights."""
        self._hook.remove()


def train_token(models: TokenModels, pixels: torch.Tensor, cfg: TokenTrainingConfig, out_file: Path,
                checkpoint_dir: Path, callbacks=None, device="cpu", models_id: str = "") -> TokenTrainer:
    """Train (resuming from `checkpoint_dir` when it holds a checkpoint) and write `out_file`."""
    from ..stages.loop import CHECKPOINT_NAME, StageSchedule, load_checkpoint, run_stage

    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME
    if checkpoint.exists() and (done := int(load_checkpoint(checkpoint)["iteration"])) > cfg.steps:
        raise InputError(f"The checkpoint in {checkpoint_dir} is at step {done}, past --steps {cfg.steps}; "
                         "ask for at least that many steps, or delete the checkpoint folder to start again.")
    trainer = TokenTrainer(models, pixels, cfg, device=device, models_id=models_id)
    # Snapshots ("previews") of the embedding go with every checkpoint.
    schedule = StageSchedule(checkpoint_every=cfg.checkpoint_every, preview_every=cfg.checkpoint_every)
    run_stage(trainer, Path(checkpoint_dir), callbacks, schedule, device="cpu")
    trainer.save(out_file)
    return trainer


def token_models_source(models: str) -> str:
    """Where `--models` points for `learn-token`: "tiny", "default" (SD 1.5), a Stable Diffusion
    pipeline folder (with model_index.json) or a Hugging Face id of one. No ControlNet is needed."""
    from ..config import DEFAULT_BASE_MODEL
    from .loading import tiny_models_dir

    if models == "tiny":
        return str(tiny_models_dir())
    if models == "default":
        return DEFAULT_BASE_MODEL
    folder = Path(models).expanduser()
    if (folder / "model_index.json").is_file():
        return str(folder.resolve())
    if folder.exists():
        raise InputError(f"--models {models}: this folder has no model_index.json; pass a Stable Diffusion "
                         "pipeline folder, 'default' or 'tiny'.")
    return models


def load_token_models(models: str, device: str = "auto", allow_download: bool = False):
    """The base model's parts for `learn-token`, loaded as the engine loads them for generation.

    Returns (TokenModels, device, the models' source, which the checkpoint fingerprint records).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..devices import resolve_device
    from .loading import from_pretrained_offline, resolve_dtype

    source = token_models_source(models)
    torch_device = resolve_device(device)
    dtype = resolve_dtype("auto", torch_device)

    def load(cls, subfolder: str, **kwargs):
        return from_pretrained_offline(cls, source, subfolder, allow_download, **kwargs)

    parts = TokenModels(
        tokenizer=load(CLIPTokenizer, "tokenizer"),
        text_encoder=load(CLIPTextModel, "text_encoder"),  # float32: the gradient passes through it
        unet=load(UNet2DConditionModel, "unet", torch_dtype=dtype),
        vae=load(AutoencoderKL, "vae", torch_dtype=dtype),
        scheduler=load(DDPMScheduler, "scheduler"))
    return parts, torch_device, source
