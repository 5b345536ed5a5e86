"""Pictures of results: overlays of predictions, labels and residual maps on image slices."""

from .overlay import OverlaySlices, axial_axis, lesion_slice_index, overlay_figure, save_overlay, take_slice
