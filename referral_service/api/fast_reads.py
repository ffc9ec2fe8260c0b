"""Plain reads by id, answered before Flask's request machinery.

`GET /fhir/{type}/{id}` with no query string is the commonest call a hospital system makes, and on
PostgreSQL it is one statement (the read, the access policy and the audit row). Flask's request
context, routing, hooks, response object and the ORM session around that statement cost more than
the statement itself: about 60 % of a read's CPU. This WSGI middleware serves such a read with the same
parts the route uses, in the same order (token and scope: `guard.principal_for`; the caller's
organisation: `actors.actor_for`; the read and its audit row: `resources.read_on_connection`; the
headers: `responses.version_headers`; metrics and the access log: `observability.RequestLog`).

It answers only successes: 200, and 304 for an If-None-Match naming the version read (or an
If-Modified-Since at or after it). Anything else
(no token, a refused scope, 404, 410, an Accept without JSON, a database error) is handed to the
Flask app unchanged, which answers it as every other request: nothing was written,
as the audit row rides in the statement that found the resource. Routing is the app's own URL map, so
a route that specialises the generic read (AuditEvent, the conformance resources) keeps its handler.
Set `FHIR_FAST_READS = False` to send every request through Flask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException

from ..domain.errors import DomainError
from ..extensions import database
from ..fhir.resources import RESOURCES, is_fhir_id
from ..observability import REQUEST_ID_HEADER, RequestLog, request_id_from
from ..services import resources as service
from ..services.actors import actor_for
from .guard import principal_for
from .responses import FHIR_JSON, accepts_json, not_modified, version_headers

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

log = logging.getLogger(__name__)

READ_ENDPOINT = "fhir.read"
CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"


class FastReads:
    """WSGI middleware in front of the Flask app's own `wsgi_app` (see the module's text)."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication) -> None:
        self.app = app
        self.next = wsgi_app
        self.requests: RequestLog = app.extensions["request_log"]
        self.types, self.rule = _read_routes(app)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET" and not environ.get("QUERY_STRING"):
            answer = self._read(environ)
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return self.next(environ, start_response)

    def _read(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """The status, headers and body of a successful read (200, or 304 for an If-None-Match naming
        the current version or an If-Modified-Since not before it, as the app's route answers it), or
        None to let the app answer."""
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        root, _, rest = path.partition("/fhir/")
        resource_type, _, res_id = rest.partition("/")
        if (root or resource_type not in self.types or not is_fhir_id(res_id)
                or not database.has_read_pool or not accepts_json(environ.get("HTTP_ACCEPT", ""))):
            return None  # (an Accept without JSON: the app's 406)
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID", ""))
        try:
            principal = principal_for(environ.get("HTTP_AUTHORIZATION", ""), self.app.config)
            if not principal.may(resource_type, "r"):
                return None
            with database.read_connection() as connection:
                actor = actor_for(connection, name=principal.client_id, kind="client",
                                  organization_id=principal.organization_id)
                stored = service.read_on_connection(connection, actor, resource_type, res_id,
                                                    request_id=request_id)
        except DomainError:
            return None
        except Exception:  # (the app answers it, and logs it there if it recurs)
            log.warning("a plain read failed before the app; the app answers it", exc_info=True,
                        extra={"request_id": request_id})
            return None
        if not_modified(environ.get("HTTP_IF_NONE_MATCH"), environ.get("HTTP_IF_MODIFIED_SINCE"), stored):
            # As Werkzeug sends the app's 304: no body and no representation headers, but the ETag.
            status, body = 304, b""
            headers = [("ETag", stored.etag), (REQUEST_ID_HEADER, request_id)]
        else:
            status, body = 200, stored.content
            headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body))),
                       *version_headers(stored).items(), (REQUEST_ID_HEADER, request_id)]
        self.requests.finished(endpoint=self.rule, method="GET", path=path, status=status,
                               elapsed=time.perf_counter() - started, request_id=request_id,
                               client=principal.client_id)
        return ("200 OK" if status == 200 else "304 Not Modified"), headers, body


def _read_routes(app: Flask) -> tuple[frozenset[str], str]:
    """The resource types whose `/fhir/{type}/{id}` the app's URL map sends to the generic read (a
    route that specialises it, such as AuditEvent's, keeps its type out), and that route's rule.

    Ids are not looked at per request: a route with a literal id would need an id that is a valid
    FHIR id, and there is none (the operations' `$name` and `_history` are not); checked here.
    """
    urls = app.url_map.bind("localhost")
    types, rules = set(), set()
    for resource_type in RESOURCES:
        try:
            rule, _ = urls.match(f"/fhir/{resource_type}/an-id", method="GET", return_rule=True)
        except HTTPException:
            continue
        if rule.endpoint == READ_ENDPOINT:
            types.add(resource_type)
            rules.add(rule.rule)
    for rule in app.url_map.iter_rules():
        parts = rule.rule.split("/")
        if (len(parts) == 4 and parts[1] == "fhir" and parts[2] in types and "<" not in parts[3]
                and is_fhir_id(parts[3]) and "GET" in (rule.methods or ())):
            raise RuntimeError(f"{rule.rule} is a literal id the plain-read path would take")
    if len(rules) != 1:
        raise RuntimeError(f"the plain read has {len(rules)} routes, expected one")
    return frozenset(types), rules.pop()
