// Vendor the browser build of @msgpack/msgpack into the Python package, so the server
// serves it from vital_actors/web/static/vendor/ with no CDN at run time.
//
//   cd web && npm ci && npm run build      (then commit the copied files)
//
// The UMD build is one self-contained file that defines the global `MessagePack`
// (decode, encode, ...); we copy it as it is, with its licence and a note of its version.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, "node_modules", "@msgpack", "msgpack");
const out = join(here, "..", "vital_actors", "web", "static", "vendor");
const { version } = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));

mkdirSync(out, { recursive: true });
copyFileSync(join(pkg, "dist.umd", "msgpack.min.js"), join(out, "msgpack.min.js"));
copyFileSync(join(pkg, "LICENSE"), join(out, "msgpack.LICENSE"));
writeFileSync(join(out, "VERSIONS"), `@msgpack/msgpack ${version} dist.umd/msgpack.min.js\n`);
console.log(`@msgpack/msgpack ${version} -> ${out}`);
