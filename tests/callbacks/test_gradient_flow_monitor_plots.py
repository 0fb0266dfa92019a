"""GradientFlowMonitor pictures (PNG files, TensorBoard images), optional matplotlib, LightningCLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from rnn_stability.callbacks import GradientFlowMonitor, plot_flow_heatmap, plot_flow_profile
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank canvas


def test_png_files_and_tensorboard_images(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = GradientFlowMonitor(every_n_steps=1, plot_every_n_measurements=2)
    trainer = quiet_trainer(tmp_path, max_steps=3, logger=logger, callbacks=[monitor])
    trainer.fit(TinyRNNRegressor(), adding_loader(seq_len=8))

    plot_dir = Path(logger.log_dir) / "gradient_flow"
    for name in ("heatmap_rnn.png", "profile_rnn.png"):
        _assert_valid_png(plot_dir / name)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"grad_flow/rnn/heatmap", "grad_flow/rnn/profile"} <= set(tags["images"])
    # written after measurement 2 (step 1) and at the end of training (step 2)
    assert [image.step for image in events.Images("grad_flow/rnn/heatmap")] == [1, 2]
    assert [scalar.step for scalar in events.Scalars("grad_flow/rnn/memory_length")] == [0, 1, 2]


def test_pngs_go_to_default_root_dir_without_logger(tmp_path):
    monitor = GradientFlowMonitor(every_n_steps=2)
    quiet_trainer(tmp_path, max_steps=3, callbacks=[monitor]).fit(TinyRNNRegressor(), adding_loader())
    _assert_valid_png(tmp_path / "gradient_flow" / "heatmap_rnn.png")
    _assert_valid_png(tmp_path / "gradient_flow" / "profile_rnn.png")


def test_plot_functions(tmp_path):
    profiles = [torch.ones(4), torch.tensor([0.0, 0.1, 1.0, 2.0, 3.0]), torch.zeros(3)]
    figure = plot_flow_heatmap([0, 5, 10], profiles, path=tmp_path / "sub" / "h.png")
    _assert_valid_png(tmp_path / "sub" / "h.png")
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (3, 5)
    assert image[1, 4] == pytest.approx(torch.tensor(3.0).log10().item())
    assert image.mask[1, 0] and image.mask[0, 4] and image.mask[2].all()  # zero norm and padding blank

    plot_flow_profile(torch.zeros(4), output_profile=torch.ones(4), threshold=0.1, path=tmp_path / "p.png")
    _assert_valid_png(tmp_path / "p.png")
    with pytest.raises(ValueError, match="steps"):
        plot_flow_heatmap([0], profiles)


def test_missing_matplotlib_names_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"rnn-stability\[plot\]"):
        GradientFlowMonitor()
    with pytest.raises(ImportError, match="plot"):
        plot_flow_profile(torch.ones(3))
    assert GradientFlowMonitor(save_plots=False).save_plots is False


def test_constructible_from_lightning_cli_yaml(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        """
trainer:
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: rnn_stability.callbacks.GradientFlowMonitor
      init_args:
        every_n_steps: 5
        modules: [rnn]
        threshold: 0.05
        save_plots: false
        max_history: 7
        explode_factor: 20.0
        vanish_fraction: 0.25
"""
    )
    cli = LightningCLI(TinyRNNRegressor, run=False, args=["--config", str(config)])
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientFlowMonitor)]
    assert (monitor.every_n_steps, monitor.modules, monitor.threshold) == (5, ["rnn"], 0.05)
    assert (monitor.max_history, monitor.explode_factor, monitor.vanish_fraction) == (7, 20.0, 0.25)
