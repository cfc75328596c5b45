"""The task command lines (host and Apptainer), sbatch parameters, and the image definition.

Apptainer cannot be installed here, so the container path is tested by what it generates: the
exact command, the job script (parsed by bash, and run with a stand-in ``srun``), and the
definition file's sections.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tunevlseg.cluster.container import bind_paths, python_command, setup_lines, task_environment
from tunevlseg.cluster.submit import array_parameters, collector_parameters, render_array_script
from tunevlseg.config.loader import ConfigError, parse_experiment
from tunevlseg.config.schema import ClusterSettings, ContainerSettings, SlurmSettings

ROOT = Path(__file__).resolve().parents[1]


def test_host_command_is_this_python_with_the_environment_exported() -> None:
    environment = task_environment(Path("/shared/hf"))
    assert python_command(ContainerSettings(), environment, []) == shlex.quote(sys.executable)
    assert setup_lines(ContainerSettings(), environment) == [
        "export HF_HOME=/shared/hf",
        "export HF_HUB_OFFLINE=1",
        "export PYTHONNOUSERSITE=1",
    ]


def test_container_command_is_exactly_this() -> None:
    container = ContainerSettings(image=Path("/shared/img/tunevlseg.sif"), binds=["/scratch"])
    environment = task_environment(Path("/shared/hf"))
    binds = bind_paths([Path("/shared/runs/med"), Path("/shared/hf"), Path("/data/kvasir")], container.binds)
    command = python_command(container, environment, binds)
    assert command == (
        "apptainer exec --nv --bind /data/kvasir --bind /shared/hf --bind /shared/runs/med "
        "--bind /scratch --env HF_HOME=/shared/hf --env HF_HUB_OFFLINE=1 "
        "--env PYTHONNOUSERSITE=1 /shared/img/tunevlseg.sif python3"
    )
    assert "--cleanenv" not in command
    assert setup_lines(container, environment) == []  # the container gets --env instead


def test_binds_drop_duplicates_and_nested_folders() -> None:
    binds = bind_paths([Path("/a/b"), Path("/a"), Path("/a/b/c"), Path("/ab"), Path("/a")])
    assert binds == ["/a", "/ab"]


def test_array_parameters_carry_the_site_settings() -> None:
    cluster = ClusterSettings(
        parallelism=6,
        timeout_min=90,
        slurm=SlurmSettings(
            partition="gpu", account="lab", qos="normal", gpus=2, gpu_type="a100",
            cpus_per_task=4, mem_gb=12.5, constraint="ampere", signal_delay_s=300,
            extra={"reservation": "week", "exclusive": True},
        ),
    )
    parameters = array_parameters(cluster, "tvls-med", ["export X=1"])
    assert parameters == {
        "job_name": "tvls-med",
        "time": 90,
        "cpus_per_task": 4,
        "mem": "12800MB",
        "signal_delay_s": 300,
        "array_parallelism": 6,
        "setup": ["export X=1"],
        "additional_parameters": {"requeue": True, "reservation": "week", "exclusive": True},
        "partition": "gpu",
        "account": "lab",
        "qos": "normal",
        "constraint": "ampere",
        "gres": "gpu:a100:2",
    }
    collector = collector_parameters(cluster, "tvls-med", [], ["11", "12"])
    assert collector["additional_parameters"] == {"dependency": "afterany:11:12"}
    assert "gres" not in collector


def test_job_script_quotes_hostile_values(tmp_path: Path) -> None:
    """Run the rendered script with a stand-in srun: nothing from the values may execute."""
    marker = tmp_path / "injected"
    evil = f"a b;$(touch {marker})`touch {marker}`'\"q"
    cluster = ClusterSettings(slurm=SlurmSettings(partition=evil, account=evil, extra={"comment": evil}))
    environment = task_environment(tmp_path / evil)
    parameters = array_parameters(cluster, "tvls-x", setup_lines(ContainerSettings(), environment))
    folder = tmp_path / evil / "jobs" / "%j"
    script = render_array_script(folder, shlex.quote(sys.executable), parameters, 3)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    record = tmp_path / "srun-args"
    stand_in = f'srun() {{ printf "%s\\n" "$@" > {shlex.quote(str(record))}; }}\n'
    body = script.replace("#!/bin/bash", "#!/bin/bash\n" + stand_in, 1)
    done = subprocess.run(["bash", "-c", body], text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    args = record.read_text().splitlines()
    assert args[-5:] == [sys.executable, "-u", "-m", "submitit.core._submit", str(folder)]
    sbatch_lines = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH --partition={shlex.quote(evil)}" in sbatch_lines
    assert f"#SBATCH --comment={shlex.quote(evil)}" in sbatch_lines


@pytest.mark.parametrize(
    ("cluster_yaml", "key", "fragment"),
    [
        ("slurm: {extra: {'x; rm -rf /': 1}}", "cluster.slurm.extra", "not an sbatch option name"),
        ("slurm: {extra: {array: '0-3'}}", "cluster.slurm.extra", "set by tunevlseg"),
        ("slurm: {partition: \"gpu\\nhostname\"}", "cluster.slurm.partition", "should match pattern"),
        ("container: {binds: ['/a,/b']}", "cluster.container.binds", "without ','"),
        ("container: {apptainer: 'apptainer; id'}", "cluster.container.apptainer", "should match pattern"),
    ],
)
def test_unsafe_cluster_values_are_refused(tmp_path: Path, cluster_yaml: str, key: str, fragment: str) -> None:
    text = (
        "name: t\noutput_dir: o\nmodels: [clipseg]\nlearners: [coop]\n"
        "datasets: [{name: d, root: d}]\ncluster:\n  " + cluster_yaml + "\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_experiment(text, tmp_path / "t.yaml")
    assert f"{key}" in str(caught.value) and fragment in str(caught.value)


def _sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = "header"
    for line in text.splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            current = match.group(1)
            sections[current] = ""
        else:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def test_apptainer_definition() -> None:
    sections = _sections((ROOT / "Apptainer.def").read_text())
    header = dict(
        line.split(":", 1) for line in sections["header"].splitlines() if re.match(r"^\w+:", line)
    )
    assert header["Bootstrap"].strip() == "docker"
    assert re.search(r"pytorch/pytorch:[\d.]+-cuda[\d.]+", header["From"])
    assert {"arguments", "files", "post", "environment", "runscript", "test"} <= set(sections)
    for source in ("pyproject.toml", "tunevlseg"):
        assert (ROOT / source).exists() and re.search(rf"^\s+{source} /opt/tunevlseg", sections["files"], re.M)
    assert 'pip install "/opt/tunevlseg[postgres]" "submitit=={{ SUBMITIT_VERSION }}"' in sections["post"]
    assert "export PYTHONNOUSERSITE=1" in sections["environment"]
    assert "--cleanenv" not in (ROOT / "Apptainer.def").read_text()


def test_build_script_pins_the_host_submitit() -> None:
    import submitit

    done = subprocess.run(
        ["bash", str(ROOT / "containers" / "build.sh"), "--print", "/tmp/x.sif"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "apptainer", "build", "--build-arg", f"SUBMITIT_VERSION={submitit.__version__}",
        "/tmp/x.sif", "Apptainer.def",
    ]
