// The Node peer of the load benchmark (issue 13): npm `agora-token` under
// Express, the way a team would deploy a token server without tokengate. It
// authenticates no caller, checks no rule and writes no audit line: it
// builds the RTC token it is asked for. The same route shape as the common
// community token servers: GET /rtc/:channel/:role/uid/:uid.
//
// Configured by the environment: PORT, AGORA_APP_ID, AGORA_APP_CERTIFICATE.
// Started by `loadbench run` (benches/load/load.sh), from its own folder
// under .tools/ where `npm ci` installed the pinned packages.
"use strict";

const express = require("express");
const { RtcTokenBuilder, RtcRole } = require("agora-token");

const appId = process.env.AGORA_APP_ID;
const certificate = process.env.AGORA_APP_CERTIFICATE;
const port = Number(process.env.PORT || 8080);
const ttl = 3600;

const app = express();

app.get("/rtc/:channel/:role/uid/:uid", (req, res) => {
  const role = req.params.role === "publisher" ? RtcRole.PUBLISHER : RtcRole.SUBSCRIBER;
  const uid = Number(req.params.uid);
  if (!Number.isInteger(uid) || uid < 0 || uid > 0xffffffff) {
    res.status(400).json({ error: "bad uid" });
    return;
  }
  const token = RtcTokenBuilder.buildTokenWithUid(appId, certificate, req.params.channel, uid, role, ttl, ttl);
  res.json({ rtcToken: token });
});

app.listen(port, "127.0.0.1");
