"""The core: workloads, metrics, tolerances, verdicts, baselines, fingerprints and the test record.

Plain Python on dataclasses: it never imports pytest, the plugin, the engines or the reports.
"""
