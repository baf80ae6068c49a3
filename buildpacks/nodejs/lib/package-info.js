// Facts about an app's package.json for the nodejs buildpack's sh scripts, one KEY=value a
// line: deps (how many "dependencies"), start (1 if scripts.start is set), main (the "main"
// file), missing (dependencies that the app's own node_modules/ lacks, space-separated),
// engine (engines.node). Values that are not plain names are left empty.
// Usage: node package-info.js APP_DIR. Exit 2 if package.json is unreadable or not JSON.
"use strict";
const fs = require("fs");
const path = require("path");

const dir = process.argv[2] || ".";
let pkg;
try {
  pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
} catch (e) {
  console.error(`package.json: ${e.message}`);
  process.exit(2);
}
if (pkg === null || typeof pkg !== "object" || Array.isArray(pkg)) {
  console.error("package.json: not a JSON object");
  process.exit(2);
}
const plain = (s) => (typeof s === "string" && /^[A-Za-z0-9_.\/@+~^<>=| -]*$/.test(s) ? s : "");
const deps = Object.keys(pkg.dependencies || {});
const scripts = pkg.scripts || {};
const ownModules = path.join(dir, "node_modules");
const missing = fs.existsSync(ownModules)
  ? deps.filter((d) => !fs.existsSync(path.join(ownModules, d, "package.json")))
  : [];
console.log(`deps=${deps.length}`);
console.log(`start=${typeof scripts.start === "string" && scripts.start.trim() ? 1 : 0}`);
console.log(`main=${plain(pkg.main).replace(/ /g, "")}`);
console.log(`missing=${missing.map(plain).join(" ")}`);
console.log(`engine=${plain((pkg.engines || {}).node)}`);
