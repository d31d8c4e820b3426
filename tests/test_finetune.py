import pytest
import torch

from fedclip import evaluate, models, tasks
from fedclip.errors import FedclipError
from fedclip.finetune import FinetuneConfig, finetune, load_pixels, noise_for_budget, prefix_tokens
from fedclip.head import Head, trained_keys
from fedclip.synth import CohortSpec, sample
from fedclip.tasks import labelled


@pytest.fixture(scope="module")
def tiny():
    vc = models.create("visionclip-tiny", seed=3)
    samples = [sample(CohortSpec(seed=2, size=64, diabetic_rate=0.6), i) for i in range(48)]
    return vc, samples


@pytest.mark.parametrize("blocks", [1, 3])
def test_converted_head_computes_what_open_clip_computes(tiny, blocks):
    vc, samples = tiny
    pixels = load_pixels(vc, [s.image for s in samples[:8]])
    classes = evaluate.class_embeddings(vc, tasks.task("referable_dr"))
    head = Head(vc, blocks, classes)
    with torch.no_grad():
        reference = vc.model.logit_scale.exp() * vc.model.encode_image(pixels, normalize=True) @ classes.T
        converted = head(prefix_tokens(vc, pixels, blocks))
    assert torch.allclose(reference, converted, atol=1e-5)
    state = head.open_clip_state()
    full = vc.model.state_dict()
    assert sorted(state) == trained_keys(vc, blocks)
    assert all(torch.equal(state[k], full[k]) for k in state)  # same weights, open_clip's own names


def test_lora_starts_as_the_base_model(tiny):
    vc, _ = tiny
    head = Head(vc, 1, torch.nn.functional.normalize(torch.randn(2, 128), dim=-1), lora_rank=4)
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    assert trainable and all(".down." in n or ".up." in n for n in trainable)
    full = vc.model.state_dict()
    assert all(torch.allclose(v, full[k]) for k, v in head.open_clip_state().items())


@pytest.mark.parametrize("mode", ["bk", "hooks", "ew", "functorch", "ghost"])
def test_dp_finetune_trains_only_the_head_in_every_grad_sample_mode(tiny, mode):
    vc0, samples = tiny
    vc = models.create("visionclip-tiny", seed=3)
    keep, y = labelled([s.labels for s in samples], "referable_dr")
    y = torch.from_numpy(y)
    tokens = prefix_tokens(vc, load_pixels(vc, [samples[i].image for i in keep]), 1)
    before = {k: v.clone() for k, v in vc.model.state_dict().items()}
    cfg = FinetuneConfig(batch_size=8, epochs=1, grad_sample_mode=mode, noise_multiplier=1.0)
    result = finetune(vc, tokens, y, cfg)
    after = vc.model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(trained_keys(vc, 1))
    assert result.sample_rate == pytest.approx(8 / len(tokens)) and result.noise_multiplier == 1.0
    assert result.steps == -(-len(tokens) // 8)


def test_non_dp_finetune_learns_and_noise_is_calibrated(tiny):
    vc, samples = tiny
    keep, y = labelled([s.labels for s in samples], "dr")
    y = torch.from_numpy(y)
    tokens = prefix_tokens(vc, load_pixels(vc, [samples[i].image for i in keep]), 2)
    cfg = FinetuneConfig(task="dr", train_blocks=2, batch_size=16, epochs=30, dp=False, lr=3e-3, optimizer="adamw")
    model = models.create("visionclip-tiny", seed=3)
    classes = evaluate.class_embeddings(model, tasks.task("dr"))

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(Head(model, 2, classes)(tokens), y))

    start = loss()
    finetune(model, tokens, y, cfg)
    assert loss() < 0.8 * start  # the model it leaves behind fits its data better
    sigma = noise_for_budget(FinetuneConfig(epsilon=8.0, rounds=5, batch_size=16), len(tokens), 3)
    looser = noise_for_budget(FinetuneConfig(epsilon=16.0, rounds=5, batch_size=16), len(tokens), 3)
    assert sigma > looser > 0


def test_errors(tiny):
    vc, _ = tiny
    with pytest.raises(FedclipError, match="train_blocks must be within"):
        Head(vc, 9, torch.zeros(2, 128))
    with pytest.raises(FedclipError, match="partition is empty"):
        finetune(vc, torch.zeros(0, 65, 128), torch.zeros(0, dtype=torch.long), FinetuneConfig())


def test_logit_adjustment_is_training_only_and_validated(tiny):
    vc, samples = tiny
    keep, y = labelled([s.labels for s in samples], "referable_dr")
    y = torch.from_numpy(y)
    tokens = prefix_tokens(vc, load_pixels(vc, [samples[i].image for i in keep]), 0)
    with pytest.raises(FedclipError, match="class_prior needs 2 positive values"):
        finetune(models.create("visionclip-tiny", seed=3), tokens, y,
                 FinetuneConfig(train_blocks=0, class_prior=(1.0,), noise_multiplier=1.0))
    head = Head(vc, 0, evaluate.class_embeddings(vc, tasks.task("referable_dr")))
    head.register_buffer("adjust", torch.log(torch.tensor([0.9, 0.1])))
    head.eval()
    with torch.no_grad():
        plain = head(tokens)
        head.train()
        adjusted = head(tokens)
    assert torch.allclose(adjusted - plain, torch.log(torch.tensor([0.9, 0.1])).expand_as(plain), atol=1e-5)


WIDTH = models.model_config("visionclip-tiny")["vision_cfg"]["width"]


def _patient_case(n_images=(1, 2, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    patients = [f"p{i}" for i, k in enumerate(n_images) for _ in range(k)]
    tokens = torch.randn(len(patients), 1, WIDTH, generator=gen)
    targets = torch.randint(0, 2, (len(patients),), generator=gen)
    return tokens, targets, patients


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_patient_level_dp_equals_a_direct_implementation(mode):
    """Per-patient clipping (book-keeping, or Opacus with a patient as the sample) == explicit per-image
    gradients summed per patient, clipped, summed, noised with the same noise: one SGD step, to 1e-6."""
    from opacus.optimizers.optimizer import _generate_noise


    vc = models.create("visionclip-tiny", seed=1)
    tokens, targets, patients = _patient_case()
    cfg = FinetuneConfig(unit="patient", dp=True, batch_size=3, epochs=1, lr=1.0, momentum=0.0, max_grad_norm=0.5,
                         train_blocks=0, grad_sample_mode=mode)
    sigma, seed = 0.7, 123
    result = finetune(models.create("visionclip-tiny", seed=1), tokens, targets, cfg, noise_multiplier=sigma,
                      sample_rate=1.0, steps=1, public_size=3, noise_seed=seed, patients=patients)

    head = Head(vc, 0, evaluate.class_embeddings(vc, tasks.task(cfg.task)))
    params = [p for p in head.parameters() if p.requires_grad]
    summed = [torch.zeros_like(p) for p in params]
    for who in dict.fromkeys(patients):
        idx = [i for i, p in enumerate(patients) if p == who]
        loss = sum(torch.nn.functional.cross_entropy(head(tokens[i:i + 1]), targets[i:i + 1]) for i in idx)
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        factor = (cfg.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        summed = [s + factor * g for s, g in zip(summed, grads, strict=True)]
    noise_gen = torch.Generator().manual_seed(seed + 1)  # the noise generator `finetune` seeds from a test seed
    expected = {}
    with torch.no_grad():
        for p, s in zip(params, summed, strict=True):
            noise = _generate_noise(sigma * cfg.max_grad_norm, s, noise_gen, secure_mode=True)
            p -= cfg.lr * (s + noise) / 3  # expected batch: q x public size = 3 patients
    expected["visual.ln_post.weight"], expected["visual.ln_post.bias"] = head.ln_post.weight, head.ln_post.bias
    expected["visual.proj"] = head.proj.weight.T
    for k, v in expected.items():
        assert torch.allclose(result.state[k], v, atol=1e-6), k


def test_a_patient_with_many_images_moves_the_update_no_more_than_the_clip_norm():
    vc = models.create("visionclip-tiny", seed=2)
    tokens = torch.randn(1, 1, WIDTH).repeat(40, 1, 1)  # one patient, 40 (identical) images
    targets = torch.zeros(40, dtype=torch.long)
    before = vc.model.state_dict()["visual.proj"].clone()
    shift = {}
    for unit in ("patient", "image"):
        cfg = FinetuneConfig(unit=unit, dp=True, batch_size=40 if unit == "image" else 1, epochs=1, lr=1.0,
                             momentum=0.0, max_grad_norm=0.1, train_blocks=0)
        out = finetune(models.create("visionclip-tiny", seed=2), tokens, targets, cfg, noise_multiplier=0.0,
                       sample_rate=1.0, steps=1, public_size=1, noise_seed=0, patients=["p"] * 40)
        shift[unit] = float((out.state["visual.proj"] - before).norm())
    assert shift["patient"] <= 0.1 * (1 + 1e-5)  # lr x C / expected batch of 1 patient
    assert shift["image"] > 3 * shift["patient"]  # per image, the same person's 40 images add up


def test_patient_level_needs_ids_and_a_per_sample_mode_that_supports_it():
    tokens, targets, patients = _patient_case()
    with pytest.raises(FedclipError, match="patient id"):
        finetune(models.create("visionclip-tiny"), tokens, targets, FinetuneConfig(unit="patient"))
    with pytest.raises(FedclipError, match="hooks or functorch"):
        finetune(models.create("visionclip-tiny"), tokens, targets,
                 FinetuneConfig(unit="patient", grad_sample_mode="ew"), patients=patients)
