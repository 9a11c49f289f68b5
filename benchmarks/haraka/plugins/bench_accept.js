// Accept every connection and recipient without looking anything up.
//
// lookup_rdns: Haraka's core resolves every client's IP address (a PTR query)
// unless a plugin answers first; mailpipe does no DNS at all, so neither
// does the benchmarked Haraka. rcpt: Haraka refuses every recipient unless
// an rcpt plugin says OK; the benchmark's recipients are all accepted.

exports.register = function () {
    this.register_hook('lookup_rdns', 'no_rdns')
    this.register_hook('rcpt', 'accept_recipient')
}

exports.no_rdns = function (next, connection) {
    next(OK, connection.remote.ip)
}

exports.accept_recipient = function (next) {
    next(OK)
}
