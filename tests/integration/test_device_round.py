"""scripts/device_round.sh collect: what a device call can bring back (8 files, 64 MiB) is packed, the rest
waits for the next collect, and links to the teachers a pipeline used are not packed."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_round.sh"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_collect_packs_what_fits_and_leaves_the_rest_for_the_next_call(tmp_path):
    root = tmp_path / "runs" / "gpu"
    for run in ("a/teacher", "b/tf-scm", "c/sf-dmd", "d/teacher"):
        folder = root / run
        folder.mkdir(parents=True)
        (folder / "train_report.json").write_text("{}")
        (folder / "checkpoint").mkdir()  # never packed
        (folder / "checkpoint" / "__0_0.distcp").write_bytes(b"0" * 1000)
        (folder / "weights").write_bytes(os.urandom(15 << 20))  # 15 MiB each: four do not fit in 60 MiB with the rest
        (folder.parent / "log.txt").write_text("trained 1 steps\n")
    (root / "teachers").mkdir()
    (root / "teachers" / "teacher").symlink_to(root / "a" / "teacher")
    (root / "DONE").touch()

    def collect(out: Path) -> set[str]:
        env = {**os.environ, "OUT": str(out), "COLLECT_SECONDS": "0"}
        result = subprocess.run(["bash", str(SCRIPT), "collect"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return set(os.listdir(out))

    first = collect(tmp_path / "out1")
    assert first == {"a-teacher.tar", "b-tf-scm.tar", "c-sf-dmd.tar", "logs.tar"}  # a fourth 15 MiB tar would not fit
    assert sum((tmp_path / "out1" / name).stat().st_size for name in first) <= 64 << 20
    second = collect(tmp_path / "out2")
    assert second == {"d-teacher.tar", "logs.tar"}  # only what the first call left; never the teachers' links
    tar = subprocess.run(["tar", "-tf", str(tmp_path / "out1" / "a-teacher.tar")], capture_output=True, text=True).stdout
    assert "teacher/weights" in tar and "checkpoint" not in tar
