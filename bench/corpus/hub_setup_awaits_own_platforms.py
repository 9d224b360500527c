"""A home-automation hub whose alarm-panel integration awaits its own platforms during setup, and they wait for it.

Modelled on home-assistant/core #23003: "Loading demo platforms result in deadlock": once
the hub made sure an integration is set up before any of its platforms is loaded, an
integration that loaded its platforms inside its own setup, and awaited them, deadlocked:
the entity component setting up the platform waits for the integration's setup, which
waits for the entity component.  The issue asks to load such platforms in tasks of their
own instead.

Here ``Hub.setup_component`` runs each domain's setup once, in a task kept in
``Hub.setups``, and every caller awaits that task.  ``setup_alarm_panel`` connects to the
panel, starts its zone monitor, then awaits ``Hub.load_platform`` for its binary_sensor
and switch platforms.  The binary_sensor entity component is set up on demand, in a task
of its own, and sets up the platforms announced to it; ``EntityComponent.setup_platform``
first awaits the setup of the platform's integration, that is the alarm_panel task, which
is awaiting the binary_sensor task.  Bootstrap stops waiting after 1.5 s, logs the two
domains still setting up and starts the hub anyway: the weather poller, the panel's zone
monitor, the automation worker and the API with its dashboard client all keep working.
The fix loads the platforms in tasks of their own.
"""
import asyncio
import json
import logging
import signal
from collections import defaultdict

log = logging.getLogger("hub")
BOOTSTRAP_TIMEOUT = 1.5


class Entity:
    def __init__(self, entity_id, state):
        self.entity_id, self.state = entity_id, state


class EntityComponent:
    """The entity domain (binary_sensor, switch) that the platforms of integrations add entities to."""

    def __init__(self, hub, domain):
        self.hub, self.domain = hub, domain
        self.entities = {}

    async def setup_platform(self, platform, info):
        # the integration providing the platform has to be set up before the platform is
        if not await self.hub.setup_component(platform):
            log.error("Unable to set up platform %s.%s: integration failed", self.domain, platform)
            return
        for entity in await PLATFORMS[self.domain, platform](self.hub, info):
            self.entities[entity.entity_id] = entity
            self.hub.states[entity.entity_id] = entity.state


class Hub:
    def __init__(self, config):
        self.config = config
        self.setups = {}
        self.components = {}
        self.announced = defaultdict(list)
        self.states = {}
        self.data = {}
        self.bus = asyncio.Queue()
        self.background = set()

    def create_task(self, coro):
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def start_setup(self, domain):
        if domain not in self.setups:
            self.setups[domain] = asyncio.create_task(self._setup_component(domain))
        return self.setups[domain]

    async def setup_component(self, domain):
        return await self.start_setup(domain)

    async def _setup_component(self, domain):
        dependencies, setup = INTEGRATIONS[domain]
        for dependency in dependencies:
            if not await self.setup_component(dependency):
                return False
        started = asyncio.get_running_loop().time()
        ok = await setup(self, domain, self.config.get(domain, {}))
        log.info("Setup of domain %s took %.1f seconds", domain, asyncio.get_running_loop().time() - started)
        return ok

    async def load_platform(self, component, platform, info):
        """Announces a discovered platform to an entity component, setting the component up if needed."""
        if component in self.components:
            self.create_task(self.components[component].setup_platform(platform, info))
            return
        self.announced[component].append((platform, info))
        await self.setup_component(component)


async def setup_entity_component(hub, domain, conf):
    component = hub.components[domain] = EntityComponent(hub, domain)
    for platform, info in hub.announced.pop(domain, []):
        await component.setup_platform(platform, info)
    return True


# --- the alarm panel integration and its device -------------------------------------------

class AlarmPanel:
    def __init__(self, port):
        self.port = port
        self.zones = {}
        self.reader = self.writer = None

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(b"HELLO hub\n")

    async def monitor(self, hub):
        while line := await self.reader.readline():
            zone, state = line.decode().split()
            if self.zones.get(zone) != state:
                self.zones[zone] = state
                hub.bus.put_nowait(("zone_changed", zone, state))


async def setup_alarm_panel(hub, domain, conf):
    panel = hub.data[domain] = AlarmPanel(conf["port"])
    await panel.connect()
    hub.create_task(panel.monitor(hub))
    for component, key in (("binary_sensor", "zones"), ("switch", "outputs")):
        await hub.load_platform(component, domain, conf[key])
    return True


async def alarm_panel_binary_sensors(hub, zones):
    panel = hub.data["alarm_panel"]
    return [Entity(f"binary_sensor.{zone}", panel.zones.get(zone, "closed")) for zone in zones]


async def alarm_panel_switches(hub, outputs):
    return [Entity(f"switch.{output}", "off") for output in outputs]


async def panel_device(reader, writer):
    """The panel on the LAN: reports its zones every 0.4 s, one of them changing now and then."""
    try:
        await reader.readline()
        tick = 0
        while True:
            tick += 1
            for zone in ("front_door", "garage", "hallway_motion"):
                state = "open" if zone == "hallway_motion" and tick % 5 == 0 else "closed"
                writer.write(f"{zone} {state}\n".encode())
            await writer.drain()
            await asyncio.sleep(0.4)
    except OSError:
        pass
    finally:
        writer.close()


# --- other integrations -------------------------------------------------------------------

async def setup_weather(hub, domain, conf):
    reader, writer = await asyncio.open_connection("127.0.0.1", conf["port"])

    async def poll():
        while True:
            writer.write(b"GET current\n")
            hub.states["weather.home"] = (await reader.readline()).decode().strip()
            await asyncio.sleep(conf["interval"])

    hub.create_task(poll())
    return True


async def weather_station(reader, writer):
    try:
        while await reader.readline():
            writer.write(b"cloudy 11.5C\n")
    except OSError:
        pass
    finally:
        writer.close()


async def setup_automation(hub, domain, conf):
    async def run_rules():
        while True:
            event, zone, state = await hub.bus.get()
            if zone == "hallway_motion" and state == "open":
                hub.states["light.hallway"] = "on"

    hub.create_task(run_rules())
    return True


async def setup_api(hub, domain, conf):
    async def handle(reader, writer):
        try:
            while await reader.readline():
                writer.write(json.dumps(hub.states).encode() + b"\n")
        except OSError:
            pass
        finally:
            writer.close()

    server = hub.data[domain] = await asyncio.start_server(handle, "127.0.0.1", 0)
    hub.data["api_port"] = server.sockets[0].getsockname()[1]
    return True


INTEGRATIONS = {
    "api": ((), setup_api),
    "automation": ((), setup_automation),
    "weather": ((), setup_weather),
    "alarm_panel": ((), setup_alarm_panel),
    "binary_sensor": ((), setup_entity_component),
    "switch": ((), setup_entity_component),
}
PLATFORMS = {
    ("binary_sensor", "alarm_panel"): alarm_panel_binary_sensors,
    ("switch", "alarm_panel"): alarm_panel_switches,
}


async def dashboard(port, frames):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"GET /api/states\n")
        frames.append(json.loads(await reader.readline()))
        del frames[:-10]
        await asyncio.sleep(1.0)


async def main():
    logging.basicConfig(level=logging.WARNING)
    panel = await asyncio.start_server(panel_device, "127.0.0.1", 0)
    station = await asyncio.start_server(weather_station, "127.0.0.1", 0)
    config = {
        "api": {},
        "automation": {},
        "weather": {"port": station.sockets[0].getsockname()[1], "interval": 0.5},
        "alarm_panel": {"port": panel.sockets[0].getsockname()[1],
                        "zones": ["front_door", "garage", "hallway_motion"], "outputs": ["siren"]},
    }
    hub = Hub(config)
    setups = [hub.start_setup(domain) for domain in config]
    _, pending = await asyncio.wait(setups, timeout=BOOTSTRAP_TIMEOUT)
    if pending:
        still = sorted(domain for domain, task in hub.setups.items() if not task.done())
        log.warning("Waiting on integrations to complete setup: %s", ", ".join(still))
    frames = []
    tasks = [asyncio.create_task(dashboard(hub.data["api_port"], frames))]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    panel.close()
    station.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
