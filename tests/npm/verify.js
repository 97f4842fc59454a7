// Cross-check: Agora's official npm package parses and verifies tokens built by tokengate.
//
// Usage: node verify.js <tools-dir>  (stdin: JSON array of {token, certificate})
// Prints a JSON array, one entry per token, with what agora-token's AccessToken2
// class saw: parse and verify results, header fields and every service's fields.
'use strict'

const path = require('path')
const tools = process.argv[2]
if (!tools) {
    console.error('usage: node verify.js <tools-dir>')
    process.exit(2)
}
const { AccessToken2 } = require(path.join(tools, 'node', 'node_modules', 'agora-token', 'src', 'AccessToken2'))

const text = buf => (buf === undefined || buf === null ? null : Buffer.from(buf).toString('utf8'))

function serviceView(service) {
    const view = { type: service.service_type(), privileges: {} }
    for (const [key, value] of Object.entries(service.__privileges)) {
        view.privileges[key] = value
    }
    const fields = {
        __channel_name: 'channel_name',
        __uid: 'uid',
        __account: 'account',
        __user_id: 'user_id',
        __room_uuid: 'room_uuid',
        __user_uuid: 'user_uuid',
    }
    for (const [field, name] of Object.entries(fields)) {
        if (service[field] !== undefined) {
            view[name] = text(service[field])
        }
    }
    if (service.__role !== undefined) {
        // agora-token 2.0.6's getInt16 reads with readUInt16LE, so -1 arrives
        // as 65535: reinterpret the same 16 bits as signed, as the spec says.
        view.role = (service.__role << 16) >> 16
    }
    if (service.__permissions !== undefined) {
        // Flattened to [resource_type, permission_type, resources] in ascending order.
        const flat = []
        const details = service.__permissions.details
        for (const resource of Object.keys(details).map(Number).sort((a, b) => a - b)) {
            const perms = details[resource]
            for (const permission of Object.keys(perms).map(Number).sort((a, b) => a - b)) {
                flat.push([resource, permission, perms[permission].map(String)])
            }
        }
        view.permissions = flat
    }
    return view
}

let input = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', chunk => { input += chunk })
process.stdin.on('end', () => {
    const results = JSON.parse(input).map(({ token, certificate }) => {
        const t = new AccessToken2('', '', 0, 0)
        const parsed = t.from_string(token)
        return {
            parsed,
            verified: parsed && t.verifySignature(certificate),
            app_id: text(t.appId),
            issue_ts: t.issueTs,
            expire: t.expire,
            salt: t.salt,
            services: t.services.map(serviceView),
        }
    })
    process.stdout.write(JSON.stringify(results))
})
