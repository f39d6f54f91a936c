// The throwaway PostgreSQL cluster lives with the scripts, so that `npm run bench` (which cannot
// import test helpers: they are not built into dist/) starts its cluster the same way the tests do.
export * from '../../scripts/throwaway/postgres';
