from datetime import UTC, datetime

from orchestrator.domain.layout import clip_id, is_output_key, parse_upload_key, upload_key


def test_clip_identity_is_bucket_key_and_etag() -> None:
    assert clip_id("b", "t/c/k.mp4", "abc") == clip_id("b", "t/c/k.mp4", '"abc"')
    assert clip_id("b", "t/c/k.mp4", "abc") != clip_id("b", "t/c/k.mp4", "abd")
    assert clip_id("b", "t/c/k.mp4", "abc") != clip_id("b2", "t/c/k.mp4", "abc")


def test_upload_keys_carry_tenant_camera_and_time() -> None:
    at = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    key = upload_key("acme", "door", at, n=2)
    assert key == "acme/door/2026/05/04/030201-2.mp4"
    parsed = parse_upload_key(key)
    assert parsed is not None
    assert (parsed.tenant, parsed.camera, parsed.recorded_at) == ("acme", "door", at)


def test_keys_outside_the_layout() -> None:
    assert parse_upload_key("loose.mp4") is None
    assert parse_upload_key("acme/loose.mp4") is None
    odd = parse_upload_key("acme/door/clip.mp4")
    assert odd is not None and odd.recorded_at is None


def test_camflow_outputs_are_recognised() -> None:
    assert is_output_key("acme/door/c-0123456789abcdef/privacy/anonymize/anonymized.mp4")
    assert not is_output_key("acme/door/2026/05/04/030201.mp4")
    assert not is_output_key("acme/door/c-notahash/x.mp4")
