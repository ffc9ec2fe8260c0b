"""JSON Patch (RFC 6902) for FHIR's PATCH interaction (http.html#patch), as HAPI takes it.

A patch document is checked before any database work (400 when it is no array of well-formed
operations) and applied to the current version of a resource in the write's unit of work (422 when
an operation cannot be applied: a path that is not there, a failed `test`). The result is then
stored exactly as a PUT of it would be (services/resources.py: `patch`).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import jsonpointer

from ..domain.errors import BadRequest, Problem, Unprocessable
from . import jsonio

MEDIA_TYPE = "application/json-patch+json"

# The largest resource a patch may make: a write's largest body (MAX_CONTENT_LENGTH's default). Only
# `copy` can outgrow the patch itself: each copy of the whole document into itself doubles it, so a
# patch of a few kilobytes could otherwise ask for gigabytes.
MAX_RESULT_BYTES = 20 * 1024 * 1024

# RFC 6902 4: the operations and the members each needs besides `op` and `path`.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}


def _malformed(index: int | None, message: str) -> BadRequest:
    where = "JSON Patch" if index is None else f"JSON Patch operation {index}"
    text = f"{where}: {message}"
    return BadRequest(text, [Problem(text, code="structure")])


def _pointer_problem(pointer: Any) -> str | None:
    """Why a value is no JSON Pointer (RFC 6901): a string, empty or starting with `/`, each `~`
    followed by 0 or 1."""
    if not isinstance(pointer, str):
        return "must be a string (a JSON Pointer)"
    try:
        jsonpointer.JsonPointer(pointer)
    except jsonpointer.JsonPointerException as exc:
        return f"{pointer[:200]!r} is not a JSON Pointer ({exc})"
    return None


def _check_operation(index: int, operation: Any) -> None:
    if not isinstance(operation, dict):
        raise _malformed(index, "must be a JSON object with op and path")
    name = operation.get("op")
    if name not in OPERATIONS:
        shown = repr(name)[:80] if name is not None else "missing"
        raise _malformed(index, f"op {shown} is not one of {', '.join(OPERATIONS)}")
    for member in ("path", *OPERATIONS[name]):
        if member not in operation:
            raise _malformed(index, f"{name} needs a {member!r} member")
        if member in ("path", "from"):
            problem = _pointer_problem(operation[member])
            if problem is not None:
                raise _malformed(index, f"{member} {problem}")


def parse_patch(document: Any) -> list[dict[str, Any]]:
    """The operations of a JSON Patch document; 400 unless it is an array of well-formed operations
    (an empty array is a patch that changes nothing)."""
    if not isinstance(document, list):
        raise _malformed(None, "the body must be a JSON array of operations (RFC 6902)")
    for index, operation in enumerate(document):
        _check_operation(index, operation)
    try:
        jsonpatch.JsonPatch(document)  # the library's own checks, so that applying finds none
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise _malformed(None, str(exc)) from None
    return document


def element_path(resource_type: str, pointer: str) -> str:
    """The FHIRPath-like element path of a JSON Pointer into a resource (`/name/0/family` ->
    `Patient.name[0].family`), for OperationOutcome expressions."""
    path = resource_type
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if part.isdigit():
            path += f"[{part}]"
        elif part != "-":
            path += f".{part}"
    return path


def _copied_size(document: Any, pointer: str) -> int:
    """The JSON size of what a `copy` duplicates (0 when `from` names nothing: the copy then fails)."""
    try:
        value = jsonpointer.resolve_pointer(document, pointer)
    except jsonpointer.JsonPointerException:
        return 0
    return len(jsonio.dumps(value))


def _reason(exc: Exception) -> str:
    """The library's reason without the copy of the document some of its messages end with."""
    return re.sub(r" in [\[{].*\Z", "", str(exc), flags=re.DOTALL)[:300]


def apply_patch(resource_type: str, resource: dict[str, Any], operations: list[dict[str, Any]]) -> Any:
    """The resource with the operations applied in order (the resource itself is left as it was);
    422 naming the first operation that cannot be applied. The result may be no resource at all
    (a `replace` of the root): the caller checks it as any other body."""
    document: Any = copy.deepcopy(resource)
    size = len(jsonio.dumps(resource))
    for index, operation in enumerate(operations):
        if operation["op"] == "copy":
            size += _copied_size(document, operation["from"])
            if size > MAX_RESULT_BYTES:
                message = (f"JSON Patch operation {index} (copy {operation['path'][:200]}) would make the "
                           f"resource larger than {MAX_RESULT_BYTES // (1024 * 1024)} MiB")
                problem = Problem(message, expression=element_path(resource_type, operation["path"]),
                                  code="too-costly")
                raise Unprocessable(message, [problem])
        try:
            document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            name, path = operation["op"], operation["path"]
            shown = f"JSON Patch operation {index} ({name} {path[:200]})"
            if isinstance(exc, jsonpatch.JsonPatchTestFailed):
                message = f"{shown} failed: the element is absent or differs from the value tested"
                code = "conflict"
            else:
                message, code = f"{shown} cannot be applied: {_reason(exc)}", "processing"
            problem = Problem(message, expression=element_path(resource_type, path), code=code)
            raise Unprocessable(message, [problem]) from None
    return document
