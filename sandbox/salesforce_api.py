"""The Salesforce org emulator's HTTP surface: login, REST, and the admin (fault) endpoints.

Paths, status codes, headers and bodies follow what simple-salesforce and the Airflow Salesforce
provider send and expect (see the project's reference notes). Bulk API 1.0 and 2.0 live in
``bulk1.py`` and ``bulk2.py`` and share the pieces defined here through ``OrgService``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import org, results, tls
from sandbox.config import Settings
from sandbox.faults import FaultError, Faults
from sandbox.limits import OrgLimits
from sandbox.objects import BY_PREFIX, OBJECTS, visible_object
from sandbox.orgconfig import OrgSettings


class ApiError(Exception):
    """An error answered in REST's shape: a JSON array of ``{message, errorCode, fields}``."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> list[dict]:
        item = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]


def session_expired() -> ApiError:
    return ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")


# ---------------------------------------------------------------------------------------------
# API versions. "Versions 31.0 through 68.0: Supported" and "Versions 21.0 through 30.0: As of Summer '25,
# these versions are retired and unavailable" (7.0-20.0 since Summer '22): API End-of-Life Policy,
# https://developer.salesforce.com/docs/platform/connect-rest-api/guide/intro_api_eol. 68.0 (Winter '27) is
# the current release; a later number is no version at all.
OLDEST_API_VERSION = 31
CURRENT_API_VERSION = 68
_VERSION = re.compile(r"(\d+)\.0")
_SEASONS = ("Summer", "Winter", "Spring")  # three releases a year; 31.0 was Summer '14, 32.0 Winter '15


def version_label(major: int) -> str:
    """The release name of an API version, as the Versions resource labels it ("Summer '14" for 31.0)."""
    cycle, season = divmod(major - 31, 3)
    year = 14 + cycle + (season > 0)
    return f"{_SEASONS[season]} '{year:02d}"


def api_version_status(version: str) -> str:
    """``supported``, ``retired`` (below 31.0) or ``unknown`` (past the current release, or not a version)."""
    found = _VERSION.fullmatch(version)
    if not found:
        return "unknown"
    major = int(found.group(1))
    if major < OLDEST_API_VERSION:
        return "retired"
    return "supported" if major <= CURRENT_API_VERSION else "unknown"


def check_rest_version(version: str) -> None:
    """REST (and Bulk API 2.0, which lives under /services/data) at a version it does not serve.

    A retired version: "REST API returns 410: GONE" (KB 005321531); the body is not documented, so it carries
    REST's error shape with UNSUPPORTED_API_VERSION, the code SOAP API documents for the same case. A version
    past the current release is an unknown resource: 404 NOT_FOUND, REST's answer for a URI that names nothing.
    """
    status = api_version_status(version)
    if status == "retired":
        raise ApiError(410, "UNSUPPORTED_API_VERSION",
                       f"API version {version} is retired and unavailable; use {OLDEST_API_VERSION}.0 or later")
    if status == "unknown":
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")


@dataclass
class OrgService:
    """What every handler shares: the org database pool, sessions, faults, API usage and the daily allocations.

    ``api_usage`` counts every call since the sandbox started (the health endpoint reports it, tests take
    differences of it); ``limits`` is what the org reports and enforces, which a test may lower."""

    settings: Settings
    pool: object  # psycopg_pool.ConnectionPool over the sandbox org database
    faults: Faults = field(default_factory=Faults)
    org: OrgSettings = field(default_factory=OrgSettings)
    sessions: set[str] = field(default_factory=set)
    api_usage: int = 0
    limits: OrgLimits = field(default_factory=OrgLimits)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_session(self) -> str:
        token = f"{self.settings.org_id[:15]}!{secrets.token_urlsafe(48)}"
        with self.lock:
            self.sessions.add(token)
        return token

    def expire_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    def check_session(self, token: str | None) -> None:
        if not token or token not in self.sessions:
            raise session_expired()

    def count_call(self) -> int:
        with self.lock:
            self.api_usage += 1
        self.limits.consume("DailyApiRequests")
        return self.api_usage

    def before_call(self) -> None:
        """Apply injected faults to one API call, in the order a real org would hit them."""
        slow = self.faults.take("slow")
        if slow:
            time.sleep(slow.seconds)
        if self.faults.take("rate_limit") or self.limits.exceeded("DailyApiRequests"):
            raise ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        error = self.faults.take("server_error")
        if error:
            if error.status == 500:
                raise ApiError(500, "UNKNOWN_EXCEPTION",
                               "An unexpected error occurred. Please include this ErrorId if you contact "
                               "support: 1370301497-4711 (-1217843958)")
            raise ApiError(503, "SERVER_UNAVAILABLE", "Server unavailable, please try again later")

    def sobject(self, name: str, api_version: str):
        """The sObject as the API user sees it at this version (None: not there for them)."""
        return visible_object(name, api_version=api_version, privacy_center=self.org.config.privacy_center)

    def resolver(self, api_version: str):
        return lambda name: self.sobject(name, api_version)

    def may_edit_converted(self) -> bool:
        return self.org.has("PermissionsAllowViewEditConvertedLeads")

    def limit_header(self) -> dict[str, str]:
        used, most = self.limits.used("DailyApiRequests"), self.limits.max("DailyApiRequests")
        return {"Sforce-Limit-Info": f"api-usage={used}/{most}"}

    @functools.cached_property
    def connected_app_key(self):
        """The public key of the certificate uploaded to the connected app, which JWT assertions must verify with."""
        from cryptography import x509

        cert = tls.ConnectedAppKeys.in_folder(self.settings.tls_dir).cert
        return x509.load_pem_x509_certificate(cert.read_bytes()).public_key()


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def rest_call(handler: Callable) -> Callable:
    """Wrap a REST handler: check the API version, authenticate, apply faults, count the call, render errors.

    A request at a version the org does not serve is answered before authentication and not counted: the
    resource does not exist, whoever asks (the docs do not say whether such calls count; none is served)."""

    @functools.wraps(handler)
    def wrapped(request: Request) -> Response:
        svc: OrgService = request.app.state.svc
        try:
            check_rest_version(request.path_params["ver"])
            svc.check_session(bearer(request))
            svc.count_call()
            svc.before_call()
            response = handler(request, svc)
        except ApiError as err:
            response = JSONResponse(err.body(), status_code=err.status)
        response.headers.update(svc.limit_header())
        return response

    return wrapped


def sobject_or_404(request: Request, svc: OrgService):
    obj = svc.sobject(request.path_params["sobject"], request.path_params["ver"])
    if obj is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return obj


def json_body(request: Request):
    """Request body as JSON from a sync handler (Starlette caches the body it received)."""
    raw = request.scope.get("sandbox.body", b"")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Login: SOAP ``login`` and the OAuth 2.0 token endpoint.

_SOAP_FIELD = re.compile(r"<(?:\w+:)?(username|password)>(.*?)</(?:\w+:)?\1>", re.S)

# "SOAP API login() is not available in API versions 65.0 and later" (KB 005132110,
# https://help.salesforce.com/s/articleView?id=005132110).
SOAP_LOGIN_LAST_VERSION = 64


def _unescape_xml(text: str) -> str:
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'")
            .replace("&amp;", "&"))


def _credentials_ok(settings: Settings, username: str, password: str) -> bool:
    return username == settings.username and password in (
        settings.password, settings.password + settings.security_token
    )


def soap_fault(code: str, message: str, *, element: str = "UnexpectedErrorFault") -> Response:
    """A SOAP fault as the partner API sends it (HTTP 500); simple-salesforce reads ``sf:exceptionCode`` and
    ``sf:exceptionMessage``. The docs name the codes but not which fault element carries each: login()'s bad
    credentials are a LoginFault, anything else here an UnexpectedErrorFault (both ApiFaults)."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com">'
        f"<soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode>"
        f"<faultstring>{code}: {message}</faultstring><detail><sf:{element}><sf:exceptionCode>{code}"
        f"</sf:exceptionCode><sf:exceptionMessage>{message}</sf:exceptionMessage></sf:{element}></detail>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return Response(xml, status_code=500, media_type="text/xml")


def soap_login(request: Request) -> Response:
    """SOAP ``login()``: refused at a retired or unknown version, from 65.0 whatever the org's setting, and
    while the org has not enabled it; then the credentials decide. The checks come in that order so that a
    refused call says nothing about the password."""
    svc: OrgService = request.app.state.svc
    version = request.path_params["ver"]
    if api_version_status(version) != "supported":
        # "If you request any resource or use an operation from a retired API version, SOAP API returns
        # 500:UNSUPPORTED_API_VERSION error code." The message and a version past the current release
        # (refused the same way, the stricter choice) are not documented.
        return soap_fault("UNSUPPORTED_API_VERSION", f"API version {version} is not supported by this org")
    if int(version.split(".")[0]) > SOAP_LOGIN_LAST_VERSION:
        return soap_fault("INVALID_OPERATION", f"The SOAP Login operation is not available in the API version "
                          f"specified ({version}). Refer to the documentation for supported versions.")
    if not svc.org.config.soap_login:
        return soap_fault("INVALID_OPERATION", "SOAP API login() is disabled by default in this org. Contact the "
                          "org administrator to enable SOAP API login().")
    body = request.scope.get("sandbox.body", b"").decode("utf-8", "replace")
    found = {k: _unescape_xml(v) for k, v in _SOAP_FIELD.findall(body)}
    if not _credentials_ok(svc.settings, found.get("username", ""), found.get("password", "")):
        return soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.",
                          element="LoginFault")
    host = request.headers.get("host", f"localhost:{svc.settings.sf_port}")
    token = svc.new_session()
    org_id = svc.settings.org_id
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>'
        f"<metadataServerUrl>https://{host}/services/Soap/m/{version}/{org_id[:15]}</metadataServerUrl>"
        "<passwordExpired>false</passwordExpired><sandbox>true</sandbox>"
        f"<serverUrl>https://{host}/services/Soap/u/{version}/{org_id[:15]}</serverUrl>"
        f"<sessionId>{token}</sessionId><userId>{org.DEFAULT_OWNER}</userId>"
        f"<userInfo><organizationId>{org_id}</organizationId><userName>{svc.settings.username}</userName>"
        "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>"
    )
    return Response(xml, media_type="text/xml")


JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# How far ahead a JWT bearer assertion's exp may be. Salesforce's help asks for an expiration "within 3 minutes";
# the excerpt of the flow's page we hold is truncated before the claim rules, so the exact window is not
# confirmed: refusing anything later (beyond a little clock skew) is the stricter choice. An exp already
# passed gets no leeway.
JWT_MAX_AHEAD_SECONDS = 3 * 60
JWT_CLOCK_SKEW_SECONDS = 10
# The connected app's selected OAuth scope: "Manage user data via APIs (api)", all this product needs.
CONNECTED_APP_SCOPE = "api"


def oauth_error(error: str, description: str) -> JSONResponse:
    """A token endpoint refusal: HTTP 400, JSON ``{error, error_description}``. "If an error occurs in the OAuth
    2.0 JWT bearer flow, the authorizing server replies with a standard OAuth error response" (OAuth 2.0
    Authorization Errors); the sandbox answers every flow's errors that way."""
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _issue_token(request: Request, svc: OrgService, *, scope: str | None) -> JSONResponse:
    s = svc.settings
    host = request.headers.get("host", f"localhost:{s.sf_port}")
    body = {
        "access_token": svc.new_session(),
        "instance_url": f"https://{host}",
        "id": f"https://{host}/id/{s.org_id}/{org.DEFAULT_OWNER}",
        "token_type": "Bearer",
        "issued_at": str(int(time.time() * 1000)),
        "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    if scope:
        body["scope"] = scope
    return JSONResponse(body)


def _client_refused(svc: OrgService, form: dict) -> JSONResponse | None:
    """The connected app's own credentials (consumer key and secret), from the form or HTTP Basic."""
    if form.get("client_id") != svc.settings.consumer_key:
        return oauth_error("invalid_client_id", "client identifier invalid")
    if form.get("client_secret") != svc.settings.consumer_secret:
        return oauth_error("invalid_client", "invalid client credentials")
    return None


def _audience_is_here(aud, svc: OrgService) -> bool:
    """Salesforce wants aud to name its login server (https://login.salesforce.com, https://test.salesforce.com,
    or an Experience Cloud site URL). Here the sandbox is the login server: an https URL whose host and port are
    the sandbox's own. Its path is not checked, because simple-salesforce builds aud from the connection's domain
    (``https://{domain}.salesforce.com``), which against the sandbox is ``localhost:<port>/services/oauth2/token#``."""
    for value in aud if isinstance(aud, list) else [aud]:
        if not isinstance(value, str):
            continue
        url = urlsplit(value)
        try:
            port = url.port
        except ValueError:
            continue
        if url.scheme == "https" and url.hostname in ("localhost", "127.0.0.1") and port == svc.settings.sf_port:
            return True
    return False


def _jwt_bearer(request: Request, svc: OrgService, form: dict) -> JSONResponse:
    """OAuth 2.0 JWT bearer flow: the assertion names the connected app (iss), the user (sub) and the login
    server (aud), expires soon (exp), and is signed (RS256) with the key whose certificate the app holds."""
    import jwt

    s = svc.settings
    assertion = form.get("assertion", "")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return oauth_error("invalid_grant", "invalid assertion: not a signed JWT")
    if header.get("alg") != "RS256":
        return oauth_error("invalid_grant", "invalid assertion: the JWT must be signed with RS256")
    if claims.get("iss") != s.consumer_key:
        return oauth_error("invalid_client_id", "client identifier invalid")
    try:
        jwt.decode(assertion, svc.connected_app_key, algorithms=["RS256"],
                   options={"verify_aud": False, "verify_exp": False})
    except jwt.InvalidSignatureError:
        return oauth_error("invalid_grant", "invalid assertion: the signature does not verify with the "
                           "connected app's certificate")
    except jwt.PyJWTError as err:
        return oauth_error("invalid_grant", f"invalid assertion: {err}")
    if not _audience_is_here(claims.get("aud"), svc):
        return oauth_error("invalid_grant", f"audience is invalid: aud must name this login server "
                           f"(https://localhost:{s.sf_port}), got {claims.get('aud')!r}")
    try:
        # A NumericDate; Salesforce's own example claims set sends it as a string ("exp": "1333685628").
        exp = int(claims["exp"]) if not isinstance(claims.get("exp"), bool) else None
    except (KeyError, TypeError, ValueError):
        exp = None
    if exp is None:
        return oauth_error("invalid_grant", "invalid assertion: exp is missing or not a NumericDate")
    now = time.time()
    if exp <= now:
        return oauth_error("invalid_grant", "invalid assertion: the JWT has expired (exp has passed)")
    if exp > now + JWT_MAX_AHEAD_SECONDS + JWT_CLOCK_SKEW_SECONDS:
        return oauth_error("invalid_grant", "invalid assertion: exp is more than 3 minutes ahead")
    # "If both are specified, prn is used" (Help KB 000204593).
    subject = claims["prn"] if "prn" in claims else claims.get("sub")
    if subject != s.username:
        return oauth_error("invalid_grant", "invalid assertion: sub is not the username of a user of this org")
    if not svc.org.config.jwt_preapproved:
        # The flow "does require prior approval of the client app"; simple-salesforce matches this text.
        return oauth_error("invalid_grant", "user hasn't approved this consumer")
    # No refresh_token: the JWT bearer flow issues none (the client signs a new assertion instead).
    return _issue_token(request, svc, scope=CONNECTED_APP_SCOPE)


def _client_credentials(request: Request, svc: OrgService, form: dict) -> JSONResponse:
    """Client credentials flow: the app's key and secret alone, acting as the app's run-as user.

    simple-salesforce uses this flow only for a My Domain (its ``domain`` neither ``login`` nor ``test``),
    which the sandbox's ``localhost:<port>/services/oauth2/token#`` domain is."""
    refused = _client_refused(svc, form)
    if refused:
        return refused
    if not svc.org.config.client_credentials_user:
        return oauth_error("invalid_grant", "no client credentials user enabled")
    # The sandbox has one user: the run-as user's session is the API user's.
    return _issue_token(request, svc, scope=CONNECTED_APP_SCOPE)


def _username_password(request: Request, svc: OrgService, form: dict) -> JSONResponse:
    """Username-password flow: deprecated and discouraged, but not blocked unless the org says so
    (OauthOidcSettings.blockOAuthUnPwFlow, "The default value is false"). It "doesn't support scopes"."""
    refused = _client_refused(svc, form)
    if refused:
        return refused
    if not _credentials_ok(svc.settings, form.get("username", ""), form.get("password", "")):
        return oauth_error("invalid_grant", "authentication failure")
    return _issue_token(request, svc, scope=None)


def oauth_token(request: Request) -> Response:
    """``POST /services/oauth2/token``: the JWT bearer, client credentials and username-password flows."""
    svc: OrgService = request.app.state.svc
    form = {k: v[0] for k, v in parse_qs(request.scope.get("sandbox.body", b"").decode()).items()}
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        form.setdefault("client_id", key)
        form.setdefault("client_secret", secret)
    flow = {JWT_BEARER_GRANT: _jwt_bearer, "client_credentials": _client_credentials,
            "password": _username_password}.get(form.get("grant_type", ""))
    if flow is None:
        return oauth_error("unsupported_grant_type", "grant type not supported")
    return flow(request, svc, form)


# ---------------------------------------------------------------------------------------------
# REST resources.

def versions(request: Request) -> Response:
    """``GET /services/data``: every version the org serves. "Authentication: none", and calls to it "do not
    count towards your org's limit", so it carries no Sforce-Limit-Info either (Versions; Limit Info Header)."""
    return JSONResponse([
        {"label": version_label(major), "url": f"/services/data/v{major}.0", "version": f"{major}.0"}
        for major in range(OLDEST_API_VERSION, CURRENT_API_VERSION + 1)
    ])


@rest_call
def limits(request: Request, svc: OrgService) -> Response:
    """The org's allocations (see ``sandbox.limits``); this call itself counts, as only Versions is exempt."""
    return JSONResponse(svc.limits.snapshot())


@rest_call
def describe_global(request: Request, svc: OrgService) -> Response:
    ver = request.path_params["ver"]
    return JSONResponse({
        "encoding": "UTF-8",
        "maxBatchSize": 200,
        "sobjects": [o.summary(ver) for o in OBJECTS.values() if svc.sobject(o.name, ver)],
    })


@rest_call
def describe_object(request: Request, svc: OrgService) -> Response:
    obj = sobject_or_404(request, svc)
    return JSONResponse(obj.describe(request.path_params["ver"]))


@rest_call
def object_metadata(request: Request, svc: OrgService) -> Response:
    obj = sobject_or_404(request, svc)
    return JSONResponse({"objectDescribe": obj.summary(request.path_params["ver"]), "recentItems": []})


def _raise_record_error(err: org.RecordError, *, status: int = 400) -> None:
    if err.code == "NOT_FOUND":
        raise ApiError(404, err.code, err.message)
    if err.code == "ENTITY_IS_DELETED":
        raise ApiError(404, err.code, err.message, [])
    raise ApiError(status, err.code, err.message, err.fields)


@rest_call
def create_record(request: Request, svc: OrgService) -> Response:
    obj = sobject_or_404(request, svc)
    values = json_body(request)
    if not isinstance(values, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject")
    with svc.pool.connection() as conn:
        out = org.create(conn, obj, values)
    if not out.success:
        _raise_record_error(out.errors[0])
    return JSONResponse({"id": out.id, "success": True, "errors": []}, status_code=201)


@rest_call
def record(request: Request, svc: OrgService) -> Response:
    obj = sobject_or_404(request, svc)
    record_id = request.path_params["id"]
    with svc.pool.connection() as conn:
        if request.method == "GET":
            names = request.query_params.get("fields")
            got = org.fetch(conn, obj, record_id, [n.strip() for n in names.split(",")] if names else None)
            if isinstance(got, org.RecordError):
                _raise_record_error(got)
            return JSONResponse(org.record_json(obj, request.path_params["ver"], got))
        if request.method == "PATCH":
            values = json_body(request)
            if not isinstance(values, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject")
            out = org.update(conn, obj, record_id, values, edit_converted=svc.may_edit_converted())
        else:
            out = org.delete(conn, obj, record_id)
    if not out.success:
        err = out.errors[0]
        if err.code in ("INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID") and request.method == "DELETE":
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        _raise_record_error(err)
    return Response(status_code=204)


@rest_call
def deleted_records(request: Request, svc: OrgService) -> Response:
    obj = sobject_or_404(request, svc)
    try:
        start = org.parse_datetime(request.query_params["start"])
        end = org.parse_datetime(request.query_params["end"])
    except (KeyError, ValueError):
        raise ApiError(400, "INVALID_REPLICATION_DATE", "start and end must be valid dateTime values") from None
    # "The start date must chronologically precede the end date by more than one minute" (REST API Developer
    # Guide, Get Deleted Records).
    if end - start <= dt.timedelta(minutes=1):
        raise ApiError(400, "INVALID_REPLICATION_DATE", "start must precede end by more than one minute")
    with svc.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, deleted_at FROM org.deletions WHERE object = %s AND deleted_at >= %s AND deleted_at < %s "
            "AND NOT hard ORDER BY seq",
            (obj.name, start, end),
        ).fetchall()
        earliest = conn.execute("SELECT min(deleted_at) FROM org.deletions WHERE object = %s",
                                (obj.name,)).fetchone()[0]
    stamp = org.Field("x", "datetime")
    return JSONResponse({
        "deletedRecords": [{"id": r[0], "deletedDate": org.json_value(stamp, r[1])} for r in rows],
        "earliestDateAvailable": org.json_value(stamp, earliest or start),
        "latestDateCovered": org.json_value(stamp, end),
    })


def _user_permission_access(text: str, svc: OrgService, ver: str) -> dict | None:
    """``SELECT Permissions... FROM UserPermissionAccess``: the API user's own permissions, one row ("Represents
    the permissions accessibility for a current user", Object Reference: UserPermissionAccess, API 41.0+).
    None when the query is about another object."""
    from sandbox import soql

    try:
        parsed = soql.parse(text)
    except soql.SoqlError:
        return None  # the general path reports the syntax error
    if parsed.sobject.lower() != "userpermissionaccess":
        return None
    if parsed.where is not None or parsed.order_by or parsed.count_only:
        raise ApiError(400, "MALFORMED_QUERY", "the sandbox serves UserPermissionAccess as a plain field list")
    granted = svc.org.snapshot()["permissions"]
    by_lower = {name.lower(): name for name in granted}
    record: dict = {"attributes": {"type": "UserPermissionAccess",
                                   "url": f"/services/data/v{ver}/sobjects/UserPermissionAccess/{org.DEFAULT_OWNER}"}}
    for ref in parsed.fields:
        name = ref.path[-1]
        if len(ref.path) > 1 or (name.lower() not in by_lower and name.lower() != "lastcacheupdate"):
            raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity 'UserPermissionAccess'. If you "
                           "are attempting to use a custom field, be sure to append the '__c' after the custom field "
                           "name. Please reference your WSDL or the describe call for the appropriate names.")
        if name.lower() == "lastcacheupdate":
            record["LastCacheUpdate"] = org.json_value(org.Field("x", "datetime"), org.now())
        else:
            record[by_lower[name.lower()]] = granted[by_lower[name.lower()]]
    return {"totalSize": 1, "done": True, "records": [record]}


def _query(request: Request, svc: OrgService, include_deleted: bool) -> Response:
    ver = request.path_params["ver"]
    text = request.query_params.get("q")
    if text is None:
        raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
    permissions = _user_permission_access(text, svc, ver)
    if permissions is not None:
        return JSONResponse(permissions)
    batch = results.batch_size(request.headers.get("sforce-query-options"))
    with svc.pool.connection() as conn:
        try:
            page = results.start_rest_query(conn, text, include_deleted=include_deleted, batch_size=batch,
                                            api_version=ver, resolve_object=svc.resolver(ver))
        except results.QueryError as err:
            raise ApiError(400, err.error_code, err.message) from None
    return JSONResponse(page)


@rest_call
def query(request: Request, svc: OrgService) -> Response:
    return _query(request, svc, include_deleted=False)


@rest_call
def query_all(request: Request, svc: OrgService) -> Response:
    return _query(request, svc, include_deleted=True)


@rest_call
def query_more(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        page = results.next_rest_page(conn, request.path_params["locator"], api_version=request.path_params["ver"])
    if page is None:
        raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    return JSONResponse(page)


# sObject Collections: at most 200 records a request, results in input order.
COLLECTION_LIMIT = 200


def _collection_result(out: org.Outcome) -> dict:
    return {"id": out.id, "success": out.success, "errors": [e.as_dict() for e in out.errors]}


def _all_or_none(conn, outcomes: list[org.Outcome], all_or_none: bool) -> list[dict]:
    """With allOrNone, one failure rolls back every record and the others report ALL_OR_NONE_OPERATION_ROLLED_BACK."""
    if not all_or_none or all(o.success for o in outcomes):
        return [_collection_result(o) for o in outcomes]
    conn.rollback()
    rolled = org.RecordError("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records "
                             "were valid and the request was using AllOrNone header")
    return [
        _collection_result(o) if not o.success else {"id": None, "success": False, "errors": [rolled.as_dict()]}
        for o in outcomes
    ]


def _row_fault(svc: OrgService, record_id: str | None) -> org.Outcome | None:
    fault = svc.faults.record_failure()
    if fault:
        return org.Outcome(record_id, False, errors=[org.RecordError(fault[0], fault[1])])
    return None


@rest_call
def collections(request: Request, svc: OrgService) -> Response:
    if request.method == "DELETE":
        ids_param = request.query_params.get("ids", "")
        record_ids = [i for i in ids_param.split(",") if i]
        all_or_none = request.query_params.get("allOrNone", "false").lower() == "true"
        if len(record_ids) > COLLECTION_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                           f"{COLLECTION_LIMIT} records into this call")
        with svc.pool.connection() as conn:
            outcomes = []
            for rid in record_ids:
                obj = BY_PREFIX.get(rid[:3])
                obj = obj and svc.sobject(obj.name, request.path_params["ver"])
                if obj is None:
                    outcomes.append(org.Outcome(rid, False, errors=[org.RecordError("MALFORMED_ID",
                                                                                    f"malformed id {rid}")]))
                    continue
                outcomes.append(_row_fault(svc, rid) or org.delete(conn, obj, rid))
            return JSONResponse(_all_or_none(conn, outcomes, all_or_none))
    body = json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise ApiError(400, "JSON_PARSER_ERROR", "records must be a list")
    records = body["records"]
    if len(records) > COLLECTION_LIMIT:
        raise ApiError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                       f"{COLLECTION_LIMIT} records into this call")
    all_or_none = bool(body.get("allOrNone", False))
    with svc.pool.connection() as conn:
        outcomes = []
        for rec in records:
            values = dict(rec)
            sobject = (values.pop("attributes", None) or {}).get("type")
            obj = svc.sobject(sobject or "", request.path_params["ver"])
            if obj is None:
                outcomes.append(org.Outcome(None, False, errors=[org.RecordError(
                    "INVALID_TYPE", "sObject type is missing or not supported in attributes")]))
                continue
            if request.method == "POST":
                outcomes.append(_row_fault(svc, None) or org.create(conn, obj, values))
            else:
                rid = values.pop("Id", None) or values.pop("id", None)
                outcomes.append(_row_fault(svc, rid) or org.update(conn, obj, rid or "", values,
                                                                   edit_converted=svc.may_edit_converted()))
        return JSONResponse(_all_or_none(conn, outcomes, all_or_none))



# ---------------------------------------------------------------------------------------------
# Admin: faults and health, for tests and the CLI.

def admin_faults(request: Request) -> Response:
    svc: OrgService = request.app.state.svc
    if request.method == "POST":
        body = json_body(request) or {}
        try:
            kind = body.pop("kind")
            svc.faults.set(kind, **body)
        except (KeyError, TypeError):
            return JSONResponse({"error": "body must be {\"kind\": ..., options...}"}, status_code=400)
        except FaultError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        if kind == "session_expiry":
            svc.expire_sessions()
            svc.faults.clear("session_expiry")
    elif request.method == "DELETE":
        svc.faults.clear(request.query_params.get("kind"))
    return JSONResponse({"faults": svc.faults.snapshot()})


def admin_org(request: Request) -> Response:
    """The org's licences, settings, the API user's permissions and its daily allocations (``limits``, in the
    Limits resource's shape) (GET), changed with a JSON body (POST); ``{"reset": true}`` restores them all."""
    svc: OrgService = request.app.state.svc
    if request.method == "POST":
        body = json_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object of org settings"}, status_code=400)
        body = dict(body)
        limit_changes = body.pop("limits", None)
        try:
            if body.get("reset"):
                svc.limits.reset()
            if limit_changes is not None:
                svc.limits.update(limit_changes)
            settings = svc.org.update(body)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse({**settings, "limits": svc.limits.snapshot()})
    return JSONResponse({**svc.org.snapshot(), "limits": svc.limits.snapshot()})


def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "api_usage": request.app.state.svc.api_usage})


class _Normalise:
    """ASGI wrapper: accept both ``query/`` and ``query`` (clients send either) and buffer the body,
    so that sync handlers (run in a thread pool, where they may block on Postgres) can read it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope["path"] = path.rstrip("/")
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            scope["sandbox.body"] = b"".join(chunks)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    # After the body, listen to the real connection (streaming responses watch for disconnects).
                    return await receive()
                sent = True
                return {"type": "http.request", "body": scope["sandbox.body"], "more_body": False}

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


def create_app(svc: OrgService, extra_routes: list[Route] | None = None) -> Callable:
    data = "/services/data/v{ver}"
    routes = [
        Route("/services/Soap/u/{ver}", soap_login, methods=["POST"]),
        Route("/services/Soap/u/{ver}/{rest:path}", soap_login, methods=["POST"]),
        Route("/services/oauth2/token", oauth_token, methods=["POST"]),
        Route("/services/data", versions, methods=["GET"]),
        Route(f"{data}/limits", limits, methods=["GET"]),
        Route(f"{data}/sobjects", describe_global, methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}", object_metadata, methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}", create_record, methods=["POST"]),
        Route(f"{data}/sobjects/{{sobject}}/describe", describe_object, methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}/deleted", deleted_records, methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}/{{id}}", record, methods=["GET", "PATCH", "DELETE"]),
        Route(f"{data}/query", query, methods=["GET"]),
        Route(f"{data}/queryAll", query_all, methods=["GET"]),
        Route(f"{data}/query/{{locator}}", query_more, methods=["GET"]),
        Route(f"{data}/queryAll/{{locator}}", query_more, methods=["GET"]),
        Route(f"{data}/composite/sobjects", collections, methods=["POST", "PATCH", "DELETE"]),
        Route("/__sandbox/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
        Route("/__sandbox/org", admin_org, methods=["GET", "POST"]),
        Route("/__sandbox/health", health, methods=["GET"]),
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes)
    app.state.svc = svc
    app.router.redirect_slashes = False
    return _Normalise(app)

