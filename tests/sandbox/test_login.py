"""Logging in to the sandbox org as to a real one, and the API versions it serves: the OAuth 2.0 JWT bearer and
client credentials flows, SOAP login() and its end of life, the Versions resource and retired versions, through
the real simple-salesforce client, Airflow's SalesforceHook and the product's hook, over HTTPS.

Each test names the Salesforce documentation page it holds the sandbox to."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceGeneralError

JWT_FLOW = "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"
OAUTH_ERRORS = "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_flow_errors.htm"
LOGIN_CALL = "https://developer.salesforce.com/docs/platform/api/guide/sforce-api-calls-login.html"
SOAP_EOL = "https://developer.salesforce.com/docs/platform/api/guide/api-eol-soap.html"


def org_settings(sandbox, **changes):
    return sandbox.org_settings(**changes)


def token_domain(sandbox) -> str:
    return f"localhost:{sandbox.env['SANDBOX_SF_PORT']}/services/oauth2/token#"


def soap_domain(sandbox, version: str) -> str:
    """Points simple-salesforce's SOAP URL (https://{domain}.salesforce.com/services/Soap/u/{v}) at the sandbox."""
    return f"localhost:{sandbox.env['SANDBOX_SF_PORT']}/services/Soap/u/{version}#"


def jwt_client(sandbox, **overrides) -> Salesforce:
    env = sandbox.env
    args = {"username": env["SALESFORCE_USERNAME"], "consumer_key": env["SALESFORCE_CONSUMER_KEY"],
            "privatekey_file": env["SALESFORCE_PRIVATE_KEY_FILE"], "domain": token_domain(sandbox),
            "version": env["SALESFORCE_API_VERSION"]}
    return Salesforce(**{**args, **overrides})


def assertion(sandbox, *, key: str | None = None, algorithm: str = "RS256", **claims) -> str:
    """A JWT bearer assertion built by hand; claims default to the valid ones."""
    env = sandbox.env
    body = {"iss": env["SALESFORCE_CONSUMER_KEY"], "sub": env["SALESFORCE_USERNAME"],
            "aud": f"https://localhost:{env['SANDBOX_SF_PORT']}", "exp": int(time.time()) + 150}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key or Path(env["SALESFORCE_PRIVATE_KEY_FILE"]).read_text(), algorithm=algorithm)


def token(sandbox, data: dict, **kwargs) -> requests.Response:
    return requests.post(f"{sandbox.instance_url}/services/oauth2/token", data=data, verify=sandbox.ca,
                         timeout=10, **kwargs)


def jwt_grant(sandbox, signed: str) -> requests.Response:
    return token(sandbox, {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": signed})


def other_private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def refused(response: requests.Response, error: str) -> str:
    """Assert an OAuth refusal (400, JSON {error, error_description}) and return its description."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error, body
    return body["error_description"]


def api_usage(sandbox) -> int:
    return requests.get(f"{sandbox.instance_url}/__sandbox/health", verify=sandbox.ca, timeout=10).json()["api_usage"]


# --- OAuth 2.0 JWT bearer flow --------------------------------------------------------------------------------


def test_jwt_bearer_login_through_simple_salesforce_and_the_airflow_hook(sandbox):
    """The exported Airflow connection logs in with the JWT bearer flow ("the client posts a JWT to the
    Salesforce OAuth token endpoint ... and issues an access token based on prior approval of the app"):
    https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"""
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    conn = json.loads(sandbox.env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
    assert conn["conn_type"] == "salesforce" and "password" not in conn
    assert set(conn["extra"]) == {"consumer_key", "private_key_file_path", "domain", "version"}

    hooked = SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()
    assert hooked.auth_type == "jwt-bearer" and hooked.sf_version == "66.0"
    assert hooked.query("SELECT COUNT() FROM Account")["done"] is True

    direct = jwt_client(sandbox)
    assert direct.session_id.startswith("00D") and direct.query("SELECT Id FROM Contact LIMIT 1")["done"]

    body = jwt_grant(sandbox, assertion(sandbox)).json()
    assert set(body) == {"access_token", "scope", "instance_url", "id", "token_type", "issued_at", "signature"}
    assert body["token_type"] == "Bearer" and body["instance_url"] == sandbox.instance_url
    assert "refresh_token" not in body


def test_jwt_signed_with_another_key_is_refused(sandbox):
    """Salesforce "validates the JWT based on a signature using a previously configured certificate": a key other
    than the one whose certificate the connected app holds is refused:
    https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"""
    with pytest.raises(SalesforceAuthenticationFailed) as err:
        jwt_client(sandbox, privatekey_file=None, privatekey=other_private_key())
    assert err.value.code == "invalid_grant" and "signature" in err.value.auth_message
    # Not RS256 (the flow's header is {"alg":"RS256"}): refused before any key is tried.
    description = refused(jwt_grant(sandbox, assertion(sandbox, key="x" * 32, algorithm="HS256")), "invalid_grant")
    assert "RS256" in description
    assert "not a signed JWT" in refused(jwt_grant(sandbox, "not-a-jwt"), "invalid_grant")


def test_jwt_for_an_unknown_app_or_user_is_refused(sandbox):
    """iss must be the connected app's consumer key and sub a user of the org; an unknown client is
    invalid_client_id "client identifier invalid", in the standard OAuth error response:
    https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_flow_errors.htm"""
    assert refused(jwt_grant(sandbox, assertion(sandbox, iss="someone-else")),
                   "invalid_client_id") == "client identifier invalid"
    assert "sub" in refused(jwt_grant(sandbox, assertion(sandbox, sub="nobody@example.com")), "invalid_grant")
    # "prn" names the user too, and wins over sub when both are given (Help KB 000204593).
    good = jwt_grant(sandbox, assertion(sandbox, sub="nobody@example.com", prn=sandbox.env["SALESFORCE_USERNAME"]))
    assert good.status_code == 200, good.text


def test_jwt_needs_the_app_pre_approved(sandbox):
    """The JWT bearer flow "does require prior approval of the client app"; unapproved, Salesforce answers
    invalid_grant "user hasn't approved this consumer", which simple-salesforce recognises:
    https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"""
    with org_settings(sandbox, jwt_preapproved=False):
        with pytest.warns(UserWarning, match="authorize this\\s+application"):
            with pytest.raises(SalesforceAuthenticationFailed) as err:
                jwt_client(sandbox)
    assert (err.value.code, err.value.auth_message) == ("invalid_grant", "user hasn't approved this consumer")
    assert jwt_client(sandbox).session_id  # approved again after the reset


def test_jwt_expiry_window(sandbox):
    """exp is a NumericDate and the JWT must not have expired; Salesforce asks for an expiration within 3 minutes
    (the stored excerpt of the flow's page is silent on the exact window: the sandbox refuses later ones):
    https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"""
    now = int(time.time())
    assert "expired" in refused(jwt_grant(sandbox, assertion(sandbox, exp=now - 5)), "invalid_grant")
    assert "3 minutes" in refused(jwt_grant(sandbox, assertion(sandbox, exp=now + 600)), "invalid_grant")
    assert "exp" in refused(jwt_grant(sandbox, assertion(sandbox, exp=None)), "invalid_grant")
    # Salesforce's own example claims set sends exp as a string; simple-salesforce does the same.
    assert jwt_grant(sandbox, assertion(sandbox, exp=str(now + 170))).status_code == 200


def test_jwt_audience_must_name_this_login_server(sandbox):
    """aud names the login server (https://login.salesforce.com, https://test.salesforce.com or a site URL);
    here the sandbox is the login server, so only its own host and port are accepted:
    https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"""
    port = int(sandbox.env["SANDBOX_SF_PORT"])
    for aud in ("https://login.salesforce.com", f"https://localhost:{port + 1}", f"http://localhost:{port}"):
        assert "audience is invalid" in refused(jwt_grant(sandbox, assertion(sandbox, aud=aud)), "invalid_grant")
    # What simple-salesforce sends with the sandbox's domain trick: https://{domain}.salesforce.com.
    trick = f"https://localhost:{port}/services/oauth2/token#.salesforce.com"
    assert jwt_grant(sandbox, assertion(sandbox, aud=trick)).status_code == 200


def test_session_expiry_is_survived_by_the_jwt_connection(sandbox, sf):
    """401: "The session ID or OAuth token expired or is invalid"; simple-salesforce answers INVALID_SESSION_ID by
    logging in again through its login flow, here a fresh JWT assertion (Status Codes and Error Responses):
    https://developer.salesforce.com/docs/platform/connect-rest-api/guide/connect_error_responses"""
    assert sf.auth_type == "jwt-bearer"
    old = sf.session_id
    with sandbox.fault("session_expiry"):
        pass
    assert sf.query("SELECT COUNT() FROM Contact")["done"]
    assert sf.session_id != old


# --- client credentials flow ----------------------------------------------------------------------------------


def test_client_credentials_need_a_run_as_user(sandbox):
    """The client credentials flow authenticates the app by its key and secret "and Salesforce issues an access
    token representing the integration itself", run as the app's execution user; without one Salesforce answers
    "no client credentials user enabled":
    https://help.salesforce.com/s/articleView?id=000886201"""
    env = sandbox.env
    args = {"consumer_key": env["SALESFORCE_CONSUMER_KEY"], "consumer_secret": env["SALESFORCE_CONSUMER_SECRET"],
            "domain": token_domain(sandbox)}
    with pytest.raises(SalesforceAuthenticationFailed) as err:
        Salesforce(**args)
    assert (err.value.code, err.value.auth_message) == ("invalid_grant", "no client credentials user enabled")

    with org_settings(sandbox, client_credentials_user=env["SALESFORCE_USERNAME"]):
        sf = Salesforce(**args)
        assert sf.auth_type == "client-credentials"
        assert sf.query("SELECT COUNT() FROM Account")["done"] is True
        body = token(sandbox, {"grant_type": "client_credentials"},
                     auth=(env["SALESFORCE_CONSUMER_KEY"], env["SALESFORCE_CONSUMER_SECRET"])).json()
        assert body["scope"] and "refresh_token" not in body
        wrong = token(sandbox, {"grant_type": "client_credentials", "client_id": env["SALESFORCE_CONSUMER_KEY"],
                                "client_secret": "wrong"})
        assert refused(wrong, "invalid_client") == "invalid client credentials"

    # simple-salesforce takes this flow only for a My Domain: with domain "login" it refuses before any request.
    with pytest.raises(SalesforceAuthenticationFailed) as err:
        Salesforce(**{**args, "domain": "login"})
    assert err.value.code == "INVALID AUTH"


# --- SOAP login() ----------------------------------------------------------------------------------------------


def soap_client(sandbox, version: str, password: str | None = None) -> Salesforce:
    env = sandbox.env
    return Salesforce(username=env["SALESFORCE_USERNAME"], password=password or env["SALESFORCE_PASSWORD"],
                      security_token=env["SALESFORCE_SECURITY_TOKEN"], domain=soap_domain(sandbox, version),
                      version=version)


def test_soap_login_is_disabled_by_default(sandbox):
    """login() "is disabled by default for orgs created in Winter '26 and later. To enable it, go to User
    Interface in Setup and select Enable SOAP API login()":
    https://developer.salesforce.com/docs/platform/api/guide/sforce-api-calls-login.html"""
    with pytest.raises(SalesforceAuthenticationFailed) as err:
        soap_client(sandbox, "64.0")
    assert err.value.code == "INVALID_OPERATION"
    assert err.value.auth_message == ("SOAP API login() is disabled by default in this org. Contact the org "
                                      "administrator to enable SOAP API login().")


def test_soap_login_works_at_64_once_enabled(sandbox):
    """"login() remains available in API version 64.0 and earlier" once the org enables it; bad credentials are
    still INVALID_LOGIN: https://developer.salesforce.com/docs/platform/api/guide/sforce-api-calls-login.html"""
    with org_settings(sandbox, soap_login=True):
        sf = soap_client(sandbox, "64.0")
        assert sf.auth_type == "password" and sf.sf_version == "64.0"
        assert sf.query("SELECT COUNT() FROM Lead")["done"] is True
        with pytest.raises(SalesforceAuthenticationFailed) as err:
            soap_client(sandbox, "64.0", password="wrong")
        assert err.value.code == "INVALID_LOGIN"


def test_soap_login_is_unavailable_from_65_even_when_enabled(sandbox):
    """"SOAP API login() is not available in API versions 65.0 and later", whatever the org's setting:
    https://help.salesforce.com/s/articleView?id=005132110 (the fault's wording is as observed from the
    platform; the page does not quote it)."""
    with org_settings(sandbox, soap_login=True):
        for version in ("65.0", "68.0"):
            with pytest.raises(SalesforceAuthenticationFailed) as err:
                soap_client(sandbox, version)
            assert err.value.code == "INVALID_OPERATION"
            assert err.value.auth_message == (
                f"The SOAP Login operation is not available in the API version specified ({version}). Refer to "
                "the documentation for supported versions.")


def test_soap_at_a_retired_version_is_unsupported(sandbox):
    """"If you request any resource or use an operation from a retired API version, SOAP API returns
    500:UNSUPPORTED_API_VERSION error code": https://developer.salesforce.com/docs/platform/api/guide/api-eol-soap.html"""
    with org_settings(sandbox, soap_login=True):
        r = requests.post(f"{sandbox.instance_url}/services/Soap/u/30.0", data="<login/>", verify=sandbox.ca,
                          headers={"content-type": "text/xml", "SOAPAction": "login"}, timeout=10)
        assert r.status_code == 500
        assert "<sf:exceptionCode>UNSUPPORTED_API_VERSION</sf:exceptionCode>" in r.text
        with pytest.raises(SalesforceAuthenticationFailed) as err:
            soap_client(sandbox, "30.0")
        assert err.value.code == "UNSUPPORTED_API_VERSION"


# --- API versions ------------------------------------------------------------------------------------------------

RELEASES = {"31.0": "Summer '14", "32.0": "Winter '15", "33.0": "Spring '15", "62.0": "Winter '25",
            "63.0": "Spring '25", "64.0": "Summer '25", "65.0": "Winter '26", "66.0": "Spring '26",
            "67.0": "Summer '26", "68.0": "Winter '27"}


def test_versions_resource_lists_every_supported_version_without_auth(sandbox):
    """The Versions resource, "URI: /services/data/ ... Authentication: none", lists each version with its label
    and URL ("Summer '14", "/services/data/v31.0", "31.0"); calls to it "do not count towards your org's limit":
    https://developer.salesforce.com/docs/platform/api-rest/guide/resources-versions.md"""
    used = api_usage(sandbox)
    for path in ("/services/data", "/services/data/"):
        r = requests.get(f"{sandbox.instance_url}{path}", verify=sandbox.ca, timeout=10)
        assert r.status_code == 200 and "Sforce-Limit-Info" not in r.headers
        listed = r.json()
        assert [v["version"] for v in listed] == [f"{n}.0" for n in range(31, 69)]
        assert all(v["url"] == f"/services/data/v{v['version']}" and set(v) == {"label", "url", "version"}
                   for v in listed)
        labels = {v["version"]: v["label"] for v in listed}
        assert {k: labels[k] for k in RELEASES} == RELEASES
    assert api_usage(sandbox) == used


def test_retired_version_is_gone_and_a_future_one_does_not_exist(sandbox, sf):
    """"If you request any resource or use an operation from a retired API version, REST API returns the 410:GONE
    error code" (versions 21.0-30.0 retired since Summer '25; 31.0-68.0 supported); Bulk API returns 400
    InvalidVersion (KB 005321531): https://developer.salesforce.com/docs/platform/connect-rest-api/guide/intro_api_eol
    A version past the current release names no resource: 404, "Either the specified resource isn't found"
    (https://developer.salesforce.com/docs/platform/connect-rest-api/guide/connect_error_responses)."""
    headers = {"Authorization": f"Bearer {sf.session_id}"}
    base = sandbox.instance_url

    def get(path):
        return requests.get(f"{base}{path}", headers=headers, verify=sandbox.ca, timeout=10)

    gone = get("/services/data/v30.0/limits")
    assert gone.status_code == 410 and gone.json()[0]["errorCode"] == "UNSUPPORTED_API_VERSION"
    assert get("/services/data/v21.0/query?q=SELECT+Id+FROM+Contact").status_code == 410
    assert get("/services/data/v30.0/jobs/query").status_code == 410  # Bulk API 2.0 lives under /services/data
    missing = get("/services/data/v69.0/limits")
    assert missing.status_code == 404
    assert missing.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
    assert get("/services/data/v31.0/limits").status_code == 200  # the oldest supported version still answers
    assert get("/services/data/v68.0/limits").status_code == 200

    old = Salesforce(session_id=sf.session_id, instance_url=sandbox.instance_url, version="30.0")
    with pytest.raises(SalesforceGeneralError) as err:
        old.query("SELECT COUNT() FROM Contact")
    assert err.value.status == 410

    bulk1 = requests.post(f"{base}/services/async/30.0/job", headers={"X-SFDC-Session": sf.session_id},
                          json={"operation": "query", "object": "Contact", "contentType": "JSON"},
                          verify=sandbox.ca, timeout=10)
    assert bulk1.status_code == 400 and bulk1.json()["exceptionCode"] == "InvalidVersion"


# --- the product's hook -----------------------------------------------------------------------------------------


def test_product_hook_defaults_to_a_current_api_version(sandbox, monkeypatch):
    """The product's hook uses API 66.0 (Spring '26) when the connection names no version, not simple-salesforce's
    59.0; versions run 31.0-68.0 and old ones are retired in turn:
    https://developer.salesforce.com/docs/platform/connect-rest-api/guide/intro_api_eol"""
    from retention.hooks.salesforce_bulk import DEFAULT_API_VERSION, SalesforceBulk2Hook

    conn = json.loads(sandbox.env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
    del conn["extra"]["version"]
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_NO_VERSION", json.dumps(conn))
    hook = SalesforceBulk2Hook("salesforce_no_version")
    assert DEFAULT_API_VERSION == "66.0" and hook.conn.sf_version == "66.0"
    assert hook.count("SELECT COUNT() FROM Account") >= 0
    assert hook.conn.base_url.endswith("/services/data/v66.0/")


def test_product_hook_refuses_soap_login_from_65_before_calling_the_org(sandbox, monkeypatch):
    """"SOAP API login() is not available in API versions 65.0 and later": a username, password and security
    token connection at such a version fails at once, saying what to configure instead:
    https://help.salesforce.com/s/articleView?id=005132110"""
    from airflow.providers.common.compat.sdk import AirflowFailException

    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook, SoapLoginUnavailable

    env = sandbox.env

    def soap_conn(conn_id: str, **extra) -> str:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
            "conn_type": "salesforce", "login": env["SALESFORCE_USERNAME"], "password": env["SALESFORCE_PASSWORD"],
            "extra": {"security_token": env["SALESFORCE_SECURITY_TOKEN"], **extra}}))
        return conn_id

    # The default version (66.0) and an explicit 65.0; the domain would reach the sandbox, so an
    # INVALID_OPERATION fault (not this error) would show that the org was called.
    for conn_id in (soap_conn("sf_soap_default", domain=soap_domain(sandbox, "66.0")),
                    soap_conn("sf_soap_65", domain=soap_domain(sandbox, "65.0"), version="65.0")):
        with pytest.raises(SoapLoginUnavailable) as err:
            SalesforceBulk2Hook(conn_id).get_conn()
        assert isinstance(err.value, AirflowFailException)  # a configuration error: no retries
        message = str(err.value)
        assert "SOAP login() is unavailable from API 65.0" in message
        assert "JWT bearer (login + consumer_key + private_key_file_path)" in message
        assert "client credentials" in message and "README 'Running against a real org" in message

    # At 64.0, in an org that enabled it, SOAP login() still works through the product's hook.
    with org_settings(sandbox, soap_login=True):
        hook = SalesforceBulk2Hook(soap_conn("sf_soap_64", domain=soap_domain(sandbox, "64.0"), version="64.0"))
        assert hook.conn.auth_type == "password" and hook.count("SELECT COUNT() FROM Lead") >= 0
