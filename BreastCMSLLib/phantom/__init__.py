"""Synthetic bilateral breast DCE-MRI phantom with known truth (the test bed and the demo).

Modules: :mod:`.grid` (the voxel grid in the patient frame), :mod:`.parameters` (a case's random parameters),
:mod:`.anatomy` (tissue values and shapes), :mod:`.render` (painting a case on a grid), :mod:`.case` (the
rendered case and its series), :mod:`.synth` (make, write and synthesize a case folder).

Frames. Images are SimpleITK images in LPS millimetres. The anatomy is built in a patient frame whose
axes are the LPS axes (x: patient Left, y: Posterior, z: Superior) and whose origin is the physical
centre of the requested grid, so the same seed gives the same anatomy on any grid: another size or
spacing, an oblique/flipped/permuted ``direction`` or another ``origin``. With the default identity
direction, i -> +x, j -> +y, k -> +z: the breasts are at small j (anterior), the chest wall, pectoral
muscle and heart posterior to them.

Default grid: 360 x 232 x 120 voxels at 1.0 x 1.0 x 1.2 mm (field of view 360 x 232 x 144 mm, a
bilateral axial exam). Against the default network input 340 x 220 x 128 it is cropped along i and j
and padded along k. A grid given only by ``shape`` (or only by ``spacing``) keeps that field of view,
so ``shape=(96, 64, 40)`` is the same exam at 3.75 x 3.625 x 3.6 mm.

Series: ``t1`` (non-fat-suppressed T1, fat bright), ``pre`` (fat-suppressed pre-contrast) and
``post_1..post_6`` at :data:`.parameters.PHASE_TIMES_MIN`; int16 voxel values (scanner-like units), Rician noise
and one smooth multiplicative bias field (receive coil) shared by all series.

Lesion. One per case, centred in fibroglandular tissue of one breast; diameter 8-30 mm. Its
appearance is driven by suspicion scores in [0, 1] (margin, kinetics, rim, size): a malignant case
scores near 1 (irregular/spiculated margin, type III wash-in/wash-out kinetics, often rim
enhancement), a benign one near 0 (oval smooth margin, slow persistent type I kinetics).
``difficulty`` in [0, 1] makes the classes overlap: each score strays from its class by a
half-normal of scale ``0.45 * difficulty``, and with probability ``0.12 * difficulty`` a case takes
the appearance of the other class. BI-RADS (3/4/5) follows the appearance, not the label. The
appearance score itself (an oracle) separates the classes with ROC AUC 1.0 at difficulty 0, 0.97 at
0.25, 0.94 at the default 0.5, 0.90 at 0.75 and 0.81 at 1 (2000 seeds each).

Breast mask truth: voxels whose centre lies in the body (skin included) and anterior to the anterior
surface of the pectoral/chest-wall muscle layer, limited laterally by the coronal plane of the anterior
axillary line (modelled halfway between the anterior chest surface and the thorax centre). The heart and
everything deeper than the muscle are outside.
"""
