"""The stability benchmark: how often does RNN training succeed with torch's defaults and with each recipe?

Tasks (`tasks.py`), recipes (`recipes.py`), conditions (`conditions.py`), one run (`train.py`), the grid
runner (`suite.py`) and the report (`report.py`); `python -m benchmarks.stability --help` runs it.
"""
