// The proxy's JSON API. Errors carry the HTTP status: 401 asks for the token, 404 means
// the route does not exist on this proxy (yet), 0 that the proxy did not answer.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(path, params) {
  const query = params ? `?${new URLSearchParams(params)}` : '';
  let response;
  try {
    response = await fetch(path + query, {
      cache: 'no-store',
      headers: { Accept: 'application/json' },
      signal: AbortSignal.timeout(10000),
    });
  } catch {
    throw new ApiError(0, 'the proxy does not answer');
  }
  const body = await response.json().catch(() => null);
  if (!response.ok || body === null) {
    const message = typeof body?.error === 'string' ? body.error : `HTTP ${response.status}`;
    throw new ApiError(response.ok ? 502 : response.status, message);
  }
  return body;
}
