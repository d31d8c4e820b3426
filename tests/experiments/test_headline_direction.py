"""The headline's direction at tiny scale: a model pretrained only on synthetic data (drawn from a private
cohort's aggregate statistics) is far above an untrained one and within a stated margin of the model
pretrained on the cohort itself, zero-shot, at a hospital neither saw. A regression of the Med-AIGC step,
pretraining or zero-shot evaluation shows here before a study takes an hour to show it."""

from fedclip import evaluate, models
from fedclip.synth import CohortSpec, sample

MARGIN = 0.10  # balanced accuracy the synthetic model may trail by at this scale (measured: it led, 0.83 vs 0.80)


def test_synthetic_pretraining_is_far_above_untrained_and_near_real(pretrained_pair):
    external = CohortSpec(seed=9, size=64, hospital="lakeshore", diabetic_rate=1.0, dr_grades=(0.5, 0, 0, 0, 0.5))
    held_out = [sample(external, i) for i in range(300)]
    images, labels = [s.image for s in held_out], [s.labels for s in held_out]

    def bacc(vc: models.VisionClip) -> float:
        return evaluate.zero_shot(vc, images, labels, "referable_dr", n_boot=0)["balanced_accuracy"]

    untrained = bacc(models.create("visionclip-tiny"))
    private = bacc(models.load_checkpoint(pretrained_pair["private"]))
    synthetic = bacc(models.load_checkpoint(pretrained_pair["synthetic"]))
    assert synthetic > untrained + 0.15, (synthetic, untrained)
    assert synthetic >= private - MARGIN, (synthetic, private)
