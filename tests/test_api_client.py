"""A client generated from the OpenAPI document: its models read what the API really
sends, and a program that uses them type-checks (and one that misuses them does not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mypy.api
from datamodel_code_generator import (
    DataModelType,
    Formatter,
    InputFileType,
    PythonVersion,
    generate,
)
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key
from orchestrator.service import open_runtime
from orchestrator.settings import Settings
from orchestrator.store.models import Role
from tests.api_world import seed_clip

CLIENT = '''\
"""Lists a tenant's clips, and reads a refusal, with the generated models."""

import sys
from datetime import datetime
from pathlib import Path

from camflow_models import ClipPage, ProblemDetails, RunStatus, RunPage, UploadGrant

page = ClipPage.model_validate_json(Path(sys.argv[1]).read_text())
newest: datetime = page.items[0].discovered_at
size: int = page.items[0].size
cursor: str | None = page.next
runs = RunPage.model_validate_json(Path(sys.argv[2]).read_text())
done: bool = runs.items[0].status is RunStatus.succeeded
refusal = ProblemDetails.model_validate_json(Path(sys.argv[3]).read_text())
status: int = refusal.status
grant = UploadGrant.model_validate_json(Path(sys.argv[4]).read_text())
fields: dict[str, str] = grant.fields
limit: int = grant.max_bytes
exact: bool = fields["key"] == grant.key
print(page.items[0].camera, size, newest.year, cursor, done, status, exact, limit)
'''
#: A misuse the generated types must catch: the cursor is a string, or none.
MISUSE = CLIENT.replace("cursor: str | None = page.next", "cursor: int = page.next")


def _mypy(program: Path) -> tuple[str, int]:
    out, err, status = mypy.api.run(
        [str(program), "--strict", "--cache-dir", str(program.parent / ".mypy_cache")]
    )
    return out + err, status


def test_a_generated_client_reads_real_answers_and_type_checks(
    settings: Settings, tmp_path: Path
) -> None:
    with open_runtime(settings) as runtime:
        seed_clip(runtime, "tenant-a", "door")
        _, text = create_key(runtime.store, "tenant-a", Role.CUSTOMER)
        _, camera = create_key(runtime.store, "tenant-a", Role.CAMERA, "door")
        client = TestClient(create_app(runtime))
        headers = {"Authorization": f"Bearer {text}"}
        answers = {
            "clips.json": client.get("/v1/clips", headers=headers),
            "runs.json": client.get("/v1/runs", headers=headers),
            "refusal.json": client.get("/v1/clips/c-0000000000000000", headers=headers),
            "grant.json": client.post(
                "/v1/cameras/door/uploads", headers={"Authorization": f"Bearer {camera}"}
            ),
        }
        document = client.get("/openapi.json").json()
    assert [a.status_code for a in answers.values()] == [200, 200, 404, 201]
    for name, answer in answers.items():
        (tmp_path / name).write_bytes(answer.content)
    generate(
        json.dumps(document),
        input_file_type=InputFileType.OpenAPI,
        output=tmp_path / "camflow_models.py",
        output_model_type=DataModelType.PydanticV2BaseModel,
        target_python_version=PythonVersion.PY_311,
        use_annotated=True,
        use_union_operator=True,
        use_standard_collections=True,
        formatters=[Formatter.BUILTIN],
    )
    program, misuse = tmp_path / "client.py", tmp_path / "misuse.py"
    program.write_text(CLIENT)
    misuse.write_text(MISUSE)

    report, status = _mypy(program)
    assert status == 0, report
    report, status = _mypy(misuse)
    assert status == 1 and "misuse.py:12: error: Incompatible types in assignment" in report, report

    ran = subprocess.run(
        [sys.executable, str(program), *(str(tmp_path / name) for name in answers)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["door", "4", "2026", "None", "True", "404", "True", "536870912"]
