"""The GitHub workflows: valid, least privilege, one GPU job at a time, CPU wheels on CPU.

They live in the checkout, not in the package: installed elsewhere, these are skipped.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).parents[1] / ".github" / "workflows"
pytestmark = pytest.mark.skipif(not WORKFLOWS.is_dir(), reason="not run from a checkout")


def load(name: str) -> dict:
    from ruamel.yaml import YAML  # check-jsonschema's own YAML reader

    return YAML(typ="safe").load((WORKFLOWS / name).read_text())


def test_the_workflows_are_valid_github_actions_files():
    checker = Path(sys.executable).with_name("check-jsonschema")
    checker = str(checker) if checker.exists() else shutil.which("check-jsonschema")
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["gpu.yml", "spec.yml"]
    done = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["gpu.yml", "spec.yml"])
def test_each_workflow_may_only_read_the_repository(name):
    assert load(name)["permissions"] == {"contents": "read"}


def test_the_gpu_job_runs_one_at_a_time_on_a_runner_labelled_gpu():
    job = load("gpu.yml")["jobs"]["cuda"]
    assert "gpu" in job["runs-on"] and job["concurrency"]["cancel-in-progress"] is False
    labels = (WORKFLOWS.parent / "actionlint.yaml").read_text()
    assert "- gpu" in labels  # declared for actionlint


def test_the_cpu_job_installs_the_cpu_wheels_of_torch_before_make_test():
    steps = [s.get("run", "") for s in load("spec.yml")["jobs"]["cpu"]["steps"]]
    wheels = next(i for i, run in enumerate(steps) if "download.pytorch.org/whl/cpu" in run)
    assert wheels < steps.index("make test")


def test_on_a_pull_request_the_gpu_job_compares_the_base_with_the_head():
    steps = load("gpu.yml")["jobs"]["cuda"]["steps"]
    compare = next(s for s in steps if "cifar-spec compare" in s.get("run", ""))
    assert compare["if"] == "${{ github.event_name == 'pull_request' }}"
    assert "base/.venv/bin/python head/.venv/bin/python" in compare["run"]


def test_baselines_are_kept_outside_the_actions_cache():
    text = (WORKFLOWS / "gpu.yml").read_text()
    assert "actions/cache" not in text and '--storage "$BASELINES"' in text


def test_the_cpu_job_installs_valgrind_before_the_spec_so_that_counting_is_tested():
    steps = [s.get("run", "") for s in load("spec.yml")["jobs"]["cpu"]["steps"]]
    valgrind = next(i for i, run in enumerate(steps) if "apt-get install" in run)
    assert "valgrind" in steps[valgrind] and valgrind < steps.index("make test")


def test_on_a_pull_request_the_cpu_job_gates_the_base_against_the_head_on_counts():
    steps = load("spec.yml")["jobs"]["cpu"]["steps"]
    compare = next(s for s in steps if "cifar-spec compare" in s.get("run", ""))
    assert compare["if"] == "${{ github.event_name == 'pull_request' }}"
    run = compare["run"]
    assert "base/.venv/bin/python .venv/bin/python" in run and "--metric instructions" in run
    assert 'elif [ "$rc" -ne 0 ]; then\n  exit "$rc"' in run  # a regression fails the job
    assert "--markdown compare.md" in run and "GITHUB_STEP_SUMMARY" in run


def test_the_cifar10_job_runs_the_real_data_tier_on_cifar10_restored_from_the_cache():
    steps = load("spec.yml")["jobs"]["cifar10"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    runs = [s.get("run", "") for s in steps]
    cache = uses.index("actions/cache@v4")
    download = next(i for i, run in enumerate(runs) if "--download" in run)
    tier = next(i for i, run in enumerate(runs) if "-m cifar10" in run)
    assert steps[cache]["with"]["path"] == "data/cifar-10-batches-py"
    assert cache < download < tier and "CIFAR_SPEC_CIFAR10=data" in runs[tier]
