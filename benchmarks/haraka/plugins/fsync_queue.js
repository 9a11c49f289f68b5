// Queue plugin: each message to a file of its own, fsynced before the 250.
//
// The durability contract mailpipe keeps (acknowledge only what is on disk),
// in the simplest form a Haraka operator would write it: open a new file,
// stream the message into it, fsync, close, then next(OK). Any failure
// answers DENYSOFT (4xx), so the client keeps the message.

const fs = require('node:fs')
const path = require('node:path')

exports.register = function () {
    const configured = this.config.get('fsync_queue.ini').main.directory || 'queue'
    this.directory = path.resolve(process.env.HARAKA || process.cwd(), configured)
    fs.mkdirSync(this.directory, { recursive: true })
    this.register_hook('queue', 'write_and_fsync')
}

exports.write_and_fsync = function (next, connection) {
    const transaction = connection.transaction
    const file = path.join(this.directory, `${transaction.uuid}.eml`)
    let answered = false
    const answer = (error) => {
        if (answered) return
        answered = true
        if (error) {
            connection.logerror(this, `could not store ${file}: ${error.message}`)
            return next(DENYSOFT, 'could not store the message, try again later')
        }
        next(OK, `stored as ${transaction.uuid}`)
    }
    fs.open(file, 'wx', (openError, fd) => {
        if (openError) return answer(openError)
        const out = fs.createWriteStream(null, { fd, autoClose: false })
        const closeWith = (error) => fs.close(fd, (closeError) => answer(error || closeError))
        out.on('error', closeWith)
        out.on('finish', () => fs.fsync(fd, closeWith))
        // The default options write the message as it was sent, dot-stuffing undone.
        transaction.message_stream.pipe(out)
    })
}
