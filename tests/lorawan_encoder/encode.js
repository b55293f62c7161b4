// An independent LoRaWAN 1.0.x uplink encoder for the tests: lora-packet, not our code.
// Reads one JSON request per line on stdin:
//   {"dev_addr": "hex4", "fcnt": n, "fport": n, "payload": "hex", "app_s_key": "hex16", "nwk_s_key": "hex16"}
// and writes one JSON answer per line: {"phy_payload": "hex", "frm_payload": "hex", "mic": "hex"}.
"use strict";
const lora = require("lora-packet");
const readline = require("readline");

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const r = JSON.parse(line);
  const packet = lora.fromFields(
    {
      MType: "Unconfirmed Data Up",
      DevAddr: Buffer.from(r.dev_addr, "hex"),
      FCnt: r.fcnt,
      FPort: r.fport,
      payload: Buffer.from(r.payload, "hex"),
    },
    Buffer.from(r.app_s_key, "hex"),
    Buffer.from(r.nwk_s_key, "hex"),
  );
  const buffers = packet.getBuffers();
  process.stdout.write(
    JSON.stringify({
      phy_payload: packet.getPHYPayload().toString("hex"),
      frm_payload: buffers.FRMPayload.toString("hex"),
      mic: buffers.MIC.toString("hex"),
    }) + "\n",
  );
});
