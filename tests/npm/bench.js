// Times Agora's official npm builder (agora-token 2.0.6) on the token that
// benches/token.rs builds: RTC publisher by uid, 32-byte channel, 3600 s.
//
// Usage: node tests/npm/bench.js [tools-dir]   (default: ./.tools)
// Prints microseconds per operation for build and for parse + verify.
'use strict'

const path = require('path')
const tools = process.argv[2] || path.join(__dirname, '..', '..', '.tools')
const pkg = path.join(tools, 'node', 'node_modules', 'agora-token', 'src')
const { RtcTokenBuilder, Role } = require(path.join(pkg, 'RtcTokenBuilder2'))
const { AccessToken2 } = require(path.join(pkg, 'AccessToken2'))

const APP_ID = '970CA35de60c44645bbae8a215061b33'
const CERT = '5CFd2fd1755d40ecb72977518be15d3b'
const CHANNEL = '7d72365eb983485397e3e3f9d460bdda'

function time(name, iterations, fn) {
    for (let i = 0; i < Math.min(iterations, 2000); i++) fn() // warm up the JIT
    const best = []
    for (let round = 0; round < 5; round++) {
        const start = process.hrtime.bigint()
        for (let i = 0; i < iterations; i++) fn()
        const ns = Number(process.hrtime.bigint() - start)
        best.push(ns / iterations / 1000)
    }
    best.sort((a, b) => a - b)
    console.log(`${name}: median ${best[2].toFixed(2)} us/op, best ${best[0].toFixed(2)} us/op (${iterations} x 5 rounds)`)
}

const build = () => RtcTokenBuilder.buildTokenWithUid(APP_ID, CERT, CHANNEL, 2882341273, Role.PUBLISHER, 3600, 3600)
const token = build()
const parseVerify = () => {
    const t = new AccessToken2('', '', 0, 0)
    return t.from_string(token) && t.verifySignature(CERT)
}
if (!parseVerify()) {
    console.error('npm agora-token could not verify its own token')
    process.exit(1)
}
console.log(`node ${process.version}, agora-token ${require(path.join(pkg, '..', 'package.json')).version}`)
time('npm build RtcTokenBuilder.buildTokenWithUid (publisher)', 20000, build)
time('npm parse + verify (AccessToken2.from_string + verifySignature)', 20000, parseVerify)
