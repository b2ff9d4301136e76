# A slow SMTP server for benchmarks: every message takes DELAY seconds after its final dot.
# Usage: python3 scripts/bench/slow-smtp.py PORT [DELAY]
import asyncio, sys
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
async def session(reader, writer):
    writer.write(b"220 slow ESMTP\r\n"); await writer.drain()
    data = False
    while True:
        line = await reader.readline()
        if not line:
            break
        if data:
            if line == b".\r\n":
                data = False
                await asyncio.sleep(DELAY)
                writer.write(b"250 2.0.0 ok\r\n")
            continue
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            writer.write(b"250-slow\r\n250 8BITMIME\r\n")
        elif verb == b"DATA":
            data = True; writer.write(b"354 go\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n"); await writer.drain(); break
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(session, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
