"""Plain REST calls through a ``kubernetes`` ``ApiClient``: its
configuration, authentication, connection pool and errors
(``ApiException``), without its generated API classes.  Importing
``CoreV1Api`` costs a process ~22 MB (every core model comes with it) for
what is, for us, a GET of a collection or a POST of an Event; an agent needs
nothing else of it."""
from __future__ import annotations

import json

# The keyword arguments of the generated list functions (and of
# kubernetes.watch.Watch.stream) -> the API server's query parameters.
QUERY = {"label_selector": "labelSelector", "field_selector": "fieldSelector", "limit": "limit",
         "_continue": "continue", "resource_version": "resourceVersion", "timeout_seconds": "timeoutSeconds",
         "allow_watch_bookmarks": "allowWatchBookmarks", "watch": "watch"}


def call(api_client, method: str, path: str, query: list[tuple[str, object]] | None = None, body=None,
         request_timeout=None):
    """The raw (urllib3) response to one request, its body not read yet;
    ``ApiException`` (with the status and the server's reason) when the status
    is not 2xx, as the generated functions raise it."""
    from kubernetes.client.rest import ApiException

    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = api_client.param_serialize(method=method, resource_path=path, query_params=list(query or ()),
                                         header_params=headers, body=body, auth_settings=["BearerToken"])
    resp = api_client.call_api(*request, _request_timeout=request_timeout)
    if not 200 <= resp.status <= 299:
        resp.read()
        raise ApiException.from_response(http_resp=resp, body=None, data=None)
    return resp.response


def collection(api_client, path: str):
    """A function that lists (with ``watch=True``: watches) the collection
    at ``path``, taking the generated list functions' keyword arguments (as
    ``kubernetes.watch.Watch.stream`` passes them); it returns the raw
    response (``_preload_content`` must be False: nothing is deserialized)."""
    def list_or_watch(*, _preload_content: bool = False, _request_timeout=None, **params):
        if _preload_content:
            raise TypeError("only the raw response is returned: pass _preload_content=False")
        query = [(QUERY[k], v) for k, v in params.items() if v is not None]
        return call(api_client, "GET", path, query, request_timeout=_request_timeout)
    list_or_watch.__doc__ = f"GET {path} (list or watch)"
    return list_or_watch


def send(api_client, method: str, path: str, body=None, request_timeout=None) -> dict:
    """One request whose answer is read whole: the object it returns."""
    resp = call(api_client, method, path, body=body, request_timeout=request_timeout)
    try:
        data = resp.data
    finally:
        resp.release_conn()
    return json.loads(data) if data else {}
