from tests.integrations.library_runs import isolated_library_run  # noqa: F401  (autouse)
