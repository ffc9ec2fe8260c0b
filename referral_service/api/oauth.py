"""OAuth2 token endpoint (client credentials grant, RFC 6749 section 4.4)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from ..auth.scopes import ScopeError, grant
from ..auth.tokens import issue_token
from ..domain.errors import Unauthorized
from ..extensions import csrf, database, limiter
from ..services.accounts import authenticate_client

bp = Blueprint("oauth", __name__, url_prefix="/oauth")
csrf.exempt(bp)


def _oauth_error(status: int, error: str, description: str, basic: bool = False) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="referral-service"' if basic else "Bearer"
    return response


def _rate_limit() -> str:
    return str(current_app.config["TOKEN_RATE_LIMIT"])


@bp.post("/token")
@limiter.limit(_rate_limit)
def token() -> Response:
    """Issue a bearer token to an authenticated client."""
    if request.mimetype and request.mimetype != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "the token request must be application/x-www-form-urlencoded"
        )
    form = request.form
    grant_type = form.get("grant_type")
    if not grant_type:
        return _oauth_error(400, "invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    auth = request.authorization
    basic = auth is not None and auth.type == "basic"
    if basic and auth is not None:
        client_id, secret = auth.username or "", auth.password or ""
        # RFC 6749 2.3: a client MUST NOT use more than one authentication method in a request. A
        # form client_id naming the Basic client is only an identification (section 3.2.1); a form
        # secret, or another client_id, is a second method, and neither is silently given way to.
        form_id = form.get("client_id")
        if "client_secret" in form or (form_id is not None and form_id != client_id):
            return _oauth_error(
                400, "invalid_request",
                "the client authenticated with HTTP Basic and with form fields; use one method only",
            )
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        return _oauth_error(401, "invalid_client", "client credentials are required", basic=True)
    g.client_id = client_id
    try:
        with database.unit_of_work() as session:
            client = authenticate_client(session, client_id, secret)
            organization_id, held = client.organization_id, client.scopes
    except Unauthorized:
        current_app.logger.warning("token refused for client %s", client_id)
        return _oauth_error(401, "invalid_client", "client authentication failed", basic=basic)
    try:
        granted = grant(form.get("scope"), held)
    except ScopeError as exc:
        return _oauth_error(400, "invalid_scope", str(exc))
    if not granted:
        return _oauth_error(400, "invalid_scope", "none of the requested scopes is allowed for this client")
    scope = " ".join(str(s) for s in granted)
    ttl = int(current_app.config["TOKEN_TTL_SECONDS"])
    access_token = issue_token(
        client_id=client_id, organization_id=organization_id, scope=scope,
        key=current_app.config["SECRET_KEY"], issuer=current_app.config["TOKEN_ISSUER"], ttl_seconds=ttl,
    )
    response = jsonify(
        access_token=access_token,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=ttl,
        scope=scope,
        organization=f"Organization/{organization_id}",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response
