/** Reading a JWT's claims, unverified: the client only reads `exp` and `sub` of its own token. */

/** The claims of a JWT (an empty object when it is not one). */
export function tokenClaims(token: string): { sub?: unknown; exp?: unknown } {
  const payload = token.split(".")[1];
  if (payload === undefined) return {};
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims === "object" && claims !== null ? claims : {};
  } catch {
    return {};
  }
}
