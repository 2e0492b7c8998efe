// Create Edge's tracking database and its two least-privilege users.
//
// The official mongo image runs this once, with mongosh, on the first start of an empty data
// volume (`docker compose down -v` empties it). compose.yaml passes the variables below.
//   MONGO_APP_USER / MONGO_APP_PASSWORD        readWrite: Sacred records runs with it.
//   MONGO_READER_USER / MONGO_READER_PASSWORD  read: Omniboard shows runs with it.

function required(name) {
  const value = process.env[name];
  if (!value) {
    // Throwing fails the init, so the container stops instead of running without users.
    throw new Error(`${name} is not set: copy .env.example to .env and fill it in`);
  }
  return value;
}

// Read everything before creating anything: a failed init leaves a volume that is never
// initialised again, so it must not leave half of the users behind.
const databaseName = process.env.MONGO_DATABASE || "edge";
const writer = { user: required("MONGO_APP_USER"), pwd: required("MONGO_APP_PASSWORD") };
const reader = { user: required("MONGO_READER_USER"), pwd: required("MONGO_READER_PASSWORD") };

// Users live in the tracking database itself, so clients authenticate against it (the default
// authSource of a mongodb://.../edge URL) and hold no role anywhere else.
const edge = db.getSiblingDB(databaseName);
edge.createUser({ ...writer, roles: [{ role: "readWrite", db: databaseName }] });
edge.createUser({ ...reader, roles: [{ role: "read", db: databaseName }] });

print(`mongo-init: created database ${databaseName} with its writer and reader users`);
