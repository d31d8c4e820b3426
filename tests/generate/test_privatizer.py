"""Per-patient DP-SGD for a diffusion UNet: each patient's gradient exactly, clipped as a whole, then noised."""

import torch

from fedclip.generate.model import Conditioning, create
from fedclip.generate.train import denoising_loss
from fedclip.privatizer import PerRecordPrivatizer


def _setup(noise_multiplier=0.0, seed=None):
    gen = create("generator-tiny", Conditioning(("riverside",)), seed=0, size=16)
    acp = gen.schedule().alphas_cumprod.float()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 16, 16, generator=g)
    rows = torch.tensor([[0, 1, 2], [3, 4, 3], [5, 5, 5]])  # three patients: 3, 2 and 1 real images
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]])
    t = torch.randint(1000, rows.shape, generator=g)
    n = torch.randn((*rows.shape, 3, 16, 16), generator=g)
    c = torch.rand((*rows.shape, gen.conditioning.width), generator=g)

    def loss(model, r, m, tt, nn_, cc):
        return (denoising_loss(model, images[r], tt, nn_, cc, acp) * m).sum()

    priv = PerRecordPrivatizer(gen, max_grad_norm=0.05, noise_multiplier=noise_multiplier, sample_rate=0.5,
                               public_records=4, chunk=2, noise_seed=seed)
    return gen, loss, priv, [rows, mask, t, n, c]


def test_each_patients_gradient_equals_one_backward_pass_over_their_images():
    gen, loss, priv, records = _setup()
    per = priv.per_record_grads(loss, records)
    for p in range(3):
        gen.zero_grad()
        loss(gen, *(r[p] for r in records)).backward()
        for k, param in gen.named_parameters():
            torch.testing.assert_close(per[k][p], param.grad, atol=2e-6, rtol=1e-4)


def test_the_step_is_the_clipped_sum_over_the_expected_batch_and_the_noise_is_fresh():
    gen, loss, priv, records = _setup()
    per = priv.per_record_grads(loss, records)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    assert (norms > 0.05).all()  # every patient is clipped at C = 0.05
    priv.step_grads(loss, records)
    clip = 0.05 / (norms + 1e-6)
    for k, p in gen.named_parameters():
        torch.testing.assert_close(p.grad, torch.einsum("b,b...->...", clip, per[k]) / 2.0, atol=1e-7, rtol=1e-4)
    noisy = [_setup(noise_multiplier=1.0) for _ in range(2)]
    for _, loss_, priv_, rec_ in noisy:
        priv_.step_grads(loss_, rec_)
    assert not torch.equal(noisy[0][0].cond.weight.grad, noisy[1][0].cond.weight.grad)  # OS CSPRNG
    seeded = [_setup(noise_multiplier=1.0, seed=3) for _ in range(2)]
    for _, loss_, priv_, rec_ in seeded:
        priv_.step_grads(loss_, rec_)
    assert torch.equal(seeded[0][0].cond.weight.grad, seeded[1][0].cond.weight.grad)  # tests only


def test_an_empty_poisson_draw_takes_a_noise_only_step():
    gen, loss, priv, records = _setup(noise_multiplier=1.0)
    empty = [r[:0] for r in records]
    priv.step_grads(loss, empty)
    grads = torch.cat([p.grad.flatten() for p in gen.parameters()])
    assert abs(float(grads.std()) - 0.05 / 2.0) < 0.05 / 2.0 * 0.02  # std sigma * C / (q * public size)
