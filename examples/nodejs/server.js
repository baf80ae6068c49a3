// Kiln sample app for the nodejs buildpack: node's http module on 0.0.0.0:$PORT, using the
// one dependency vendored in node_modules/ (is-number).
const http = require("http");
const isNumber = require("is-number");
const isNumberVersion = require("is-number/package.json").version;

const port = Number(process.env.PORT || 8080);

http
  .createServer((req, res) => {
    const body =
      "Hello from nodejs\n" +
      `node ${process.version}, is-number ${isNumberVersion}\n` +
      `isNumber(process.env.PORT) = ${isNumber(process.env.PORT)}\n`;
    res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
    res.end(body);
  })
  .listen(port, "0.0.0.0", () => console.log(`listening on 0.0.0.0:${port}`));
