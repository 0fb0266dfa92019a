from rnn_stability.data import adding_problem
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


def test_tiny_fit_runs(tmp_path):
    model = TinyRNNRegressor()
    quiet_trainer(tmp_path, max_steps=2).fit(model, adding_loader())
    assert model.global_step == 2


def test_adding_problem_rejects_bad_length():
    import pytest

    with pytest.raises(ValueError, match="seq_len"):
        adding_problem(2, 1)
