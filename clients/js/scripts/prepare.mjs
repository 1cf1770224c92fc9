// npm runs this on install from a path or git (and on `npm ci` here): build dist/. Installed
// as a dependency, this package has no devDependencies of its own yet, so TypeScript is
// installed here first (from package-lock.json) when it is missing.
import { execSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
if (!existsSync(tsc)) {
  execSync("npm ci --ignore-scripts --no-audit --no-fund", { cwd: root, stdio: "inherit" });
}
execSync(`"${process.execPath}" "${tsc}" -p tsconfig.json`, { cwd: root, stdio: "inherit" });
