"""Procedural Med-AIGC: synthetic fundus photographs with captions and labels, from a cohort spec."""

from fedclip.synth.cohort import CohortSpec, Patient, Sample, patient, sample
from fedclip.synth.profiles import PROFILES, HospitalProfile, profile
from fedclip.synth.taxonomy import CONDITION_NAMES, CONDITIONS, LABEL_COLUMNS, QUALITY_NAMES

__all__ = [
    "CONDITIONS", "CONDITION_NAMES", "LABEL_COLUMNS", "PROFILES", "QUALITY_NAMES", "CohortSpec",
    "HospitalProfile", "Patient", "Sample", "patient", "profile", "sample",
]
